@echo off
rem Set up everything the tests need and run the whole suite (arguments go to pytest).
rem The same steps as test.sh: scripts\setup.py, then pytest.
setlocal
chcp 65001 >nul
cd /d "%~dp0"
set "PY="
py -3 -c "import sys; sys.exit(sys.version_info < (3, 10))" >nul 2>nul && set "PY=py -3"
if not defined PY (
  python -c "import sys; sys.exit(sys.version_info < (3, 10))" >nul 2>nul && set "PY=python"
)
if not defined PY (
  echo Python 3.10 or newer is needed: install it from https://www.python.org/downloads/ ^(tick "Add python.exe to PATH"^), then run this again.
  echo Нужен Python 3.10 или новее: установите его с https://www.python.org/downloads/ ^(отметьте "Add python.exe to PATH"^) и запустите снова.
  exit /b 1
)
%PY% scripts\setup.py --extras test
if errorlevel 1 exit /b 1
rem The browser tests need a Chromium: Microsoft Edge is one, and every Windows has it.
if not defined AZR_CHROMIUM if exist "%ProgramFiles(x86)%\Microsoft\Edge\Application\msedge.exe" set "AZR_CHROMIUM=%ProgramFiles(x86)%\Microsoft\Edge\Application\msedge.exe"
".venv\Scripts\python.exe" -m pytest -q %*
