#!/bin/sh
# Runs inside the image at build time (liveng [[scripts]]): the user the browser runs as. A system
# user with a locked password and no login shell: nothing can log in as it; systemd starts its one
# session (signage-kiosk.service). video/render/input: the screen, the GPU and the touch screen.
set -eu
if ! id kiosk >/dev/null 2>&1; then
	useradd --system --create-home --home-dir /home/kiosk --shell /usr/sbin/nologin \
		--groups video,render,input kiosk
fi
passwd --lock kiosk >/dev/null
