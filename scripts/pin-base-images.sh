#!/usr/bin/env bash
# Pin the Dockerfile's base images (the ARG *_IMAGE defaults) to the digest
# their tag points at now, so a build months from now starts from the same
# bytes. Run it to take a newer python:3.11 base (security fixes), review the
# diff, rebuild and test.
#
#   scripts/pin-base-images.sh            rewrite the Dockerfile's ARG lines
#   scripts/pin-base-images.sh --check    only show what would change
#
# Needs skopeo (apt-get install skopeo) and access to the registry. The digest
# is that of the manifest the tag names, for a multi-platform image its index,
# so every platform stays buildable. A build without a registry overrides
# both ARGs instead (scripts/build-image.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
dockerfile=Dockerfile
check=false
[[ ${1:-} == --check ]] && check=true
command -v skopeo >/dev/null || { echo "error: skopeo is required" >&2; exit 1; }

changed=0
while IFS= read -r line; do
  name=${line#ARG }; name=${name%%=*}
  ref=${line#*=}; ref=${ref%%@*}
  # Short Docker Hub names (python:3.11-slim) live under docker.io/library.
  full=$ref
  [[ $ref == */* ]] || full=docker.io/library/$ref
  digest=sha256:$(skopeo inspect --raw "docker://$full" | sha256sum | cut -d' ' -f1)
  new="ARG $name=$ref@$digest"
  if [[ $new != "$line" ]]; then
    echo "$name: ${line#*=} -> $ref@$digest"
    changed=1
    $check || sed -i "s|^ARG $name=.*|$new|" "$dockerfile"
  fi
done < <(grep -E '^ARG [A-Z_]+_IMAGE=' "$dockerfile")
[[ $changed == 0 ]] && echo "base images already pinned to their tags' current digests"
exit 0
