#!/usr/bin/env bash
# Builds cinder's container image where no registry can be reached: the runtime root
# filesystem from Debian 12's packages (mmdebstrap), the release binary copied in, imported
# with podman with the Containerfile's settings. Needs mmdebstrap and podman (Debian
# packages of those names) and network access to a Debian mirror.
#
#   deploy/build-offline.sh [TAG]        (default cinder:latest)
#   deploy/build-offline.sh --plan       (print the packages and image settings, build nothing)
set -euo pipefail
cd "$(dirname "$0")/.."
tag="${1:-cinder:latest}"
containerfile=deploy/Containerfile

# One definition of what the runtime holds: the Containerfile's.
packages=$(sed -n 's/^ARG RUNTIME_PACKAGES="\(.*\)"$/\1/p' "$containerfile")
[ -n "$packages" ] || { echo "no ARG RUNTIME_PACKAGES in $containerfile" >&2; exit 1; }
changes=()
while IFS= read -r line; do changes+=(--change "$line"); done < <(grep -E '^(ENV|USER|EXPOSE|ENTRYPOINT|CMD) ' "$containerfile")
if [ "$tag" = --plan ]; then
    echo "packages: $packages"
    printf '%s\n' "${changes[@]}" | grep -v '^--change$'
    exit 0
fi

cargo build --release -p cinder
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mmdebstrap --variant=minbase --include="${packages// /,}" \
    --customize-hook='copy-in target/release/cinder /usr/local/bin' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
    bookworm "$work/rootfs.tar"
podman import "${changes[@]}" "$work/rootfs.tar" "$tag"
podman image inspect "$tag" --format '{{.Id}} {{.Size}} bytes {{.Config.Entrypoint}} {{.Config.Cmd}} user {{.Config.User}}'
