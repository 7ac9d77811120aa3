#!/bin/sh
# Runs inside the image at build time (liveng [[scripts]]): records what the site runs on.
set -eu
{
	echo "liveng server example ($LIVENG_TARGET, $LIVENG_ARCH, Debian $LIVENG_SUITE)"
	dpkg-query -W -f '${Package} ${Version}\n' nginx
} > /var/www/html/about.txt
