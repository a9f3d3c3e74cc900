@echo off
rem Set up (first time; later runs only check) and start the web studio, opened in the browser.
rem The same steps as studio.sh: scripts\setup.py, then .venv\Scripts\azr serve --open. Arguments go to azr serve.
rem On failure it waits for a key: started by a double click, the window would close at once.
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
  pause
  exit /b 1
)
%PY% scripts\setup.py
if errorlevel 1 (
  pause
  exit /b 1
)
".venv\Scripts\azr.exe" serve --open %*
