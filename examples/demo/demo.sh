#!/bin/sh
# The demo program: says hello in the journal, then every minute.
. /etc/os-release
while true; do
    echo "hello from $PORTABLE_ID $IMAGE_VERSION"
    sleep 60
done
