#!/usr/bin/env bash
# `make demo`: a scripted tour of the perceus admin command against a throwaway
# instance (the PXE boot of a real node replaces this once the boot flow lands).
set -euo pipefail

demo=$(mktemp -d /tmp/perceus-demo.XXXXXX)
export PERCEUS_SYSCONFDIR="$demo/etc" PERCEUS_STATEDIR="$demo/var" HOME="$demo/home"
mkdir -p "$HOME"

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }

echo "perceus demo: instance in $demo"
step perceus -y init --master-device lo --transfer-master 127.0.0.1
step perceus info config "Node Name"
printf '02:00:00:00:00:%02X\n' $(seq 0 23) > "$demo/rack1.macs"
echo; echo "# 24 MACs in rack order, one per line (guide 4.1):"; head -3 "$demo/rack1.macs"; echo "..."
step perceus -q node import < "$demo/rack1.macs"
step perceus node add 02:00:00:00:01:01 io1
step perceus node add 02:00:00:00:01:02 io2
step perceus node set group interactive 'n000[0-3]'
step perceus group set desc "Interactive and login nodes" interactive
# a tiny VNFS: busybox and an /init, packed into a capsule and imported (guide 4.3-4.5)
mkdir -p "$demo/tree/bin" "$demo/tree/etc" "$demo/tree/sbin"
cp /bin/busybox "$demo/tree/bin/busybox"; ln -s busybox "$demo/tree/bin/sh"; ln -s /bin/busybox "$demo/tree/sbin/init"
printf 'ID=demo\nVERSION_ID="1"\n' > "$demo/tree/etc/os-release"
step perceus capsule pack "$demo/tree" "$demo/" --name demo --version 1.0 --no-kernel
step perceus vnfs import "$demo/demo-1.0-1.stateless.x86_64.vnfs"
step perceus vnfs list
step perceus node set vnfs demo-1.0-1.stateless.x86_64 'n00[00-05,06,20-23]' 'io*'
step perceus node summary 'n00[00-07]' 'io*'
step perceus -y node delete 'n000[0-2]'
step perceus node add 00:11:22:33:44:55
step perceus node set desc "New node is a hot spare" n0000
step perceus node set desc "This node just burnt up its CPU" n0009
step perceus -y node replace n0009 n0000
step perceus node show n0009
step perceus group nodelist
step perceus node status 'n00[09-12]'
echo
echo "perceus demo: done (instance left in $demo)"
