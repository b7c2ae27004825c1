#!/bin/sh
set -e
echo "setting up in $MODE mode"
python3 /srv/app/main.py
