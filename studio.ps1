# Set up (first time; later runs only check) and start the web studio, opened in the browser.
# The same steps as studio.sh: scripts\setup.py, then .venv\Scripts\azr serve --open.
# Arguments go to azr serve. If PowerShell refuses to run scripts, use studio.cmd instead.
Set-Location -LiteralPath $PSScriptRoot
$py = $null
foreach ($candidate in @(@('py', '-3'), @('python'))) {
    if (Get-Command $candidate[0] -ErrorAction SilentlyContinue) {
        $rest = @($candidate | Select-Object -Skip 1)
        # A try: the Microsoft Store's stand-in "python" writes to stderr and fails.
        try { & $candidate[0] @rest -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>$null } catch { continue }
        if ($LASTEXITCODE -eq 0) { $py = $candidate; break }
    }
}
if (-not $py) {
    Write-Host 'Python 3.10 or newer is needed: install it from https://www.python.org/downloads/ (tick "Add python.exe to PATH"), then run this again.'
    Write-Host 'Нужен Python 3.10 или новее: установите его с https://www.python.org/downloads/ (отметьте "Add python.exe to PATH") и запустите снова.'
    exit 1
}
$rest = @($py | Select-Object -Skip 1)
& $py[0] @rest scripts\setup.py
if ($LASTEXITCODE -ne 0) { exit $LASTEXITCODE }
& .\.venv\Scripts\azr.exe serve --open @args
exit $LASTEXITCODE
