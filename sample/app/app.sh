#!/bin/sh
# Prints what it runs as, so an original and a converted run can be compared.
echo "$GREETING, $*!"
echo "uid=$(id -u) gid=$(id -g) cwd=$(pwd)"
echo "files in /bin: $(ls /bin | wc -l)"
