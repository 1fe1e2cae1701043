#!/usr/bin/env bash
# Install the Debian packages the tests and `fracture up` use, only those missing.
#
# redis-server: the queue tests' broker (and `fracture up`'s, when present).
# chromium + fonts: the browser tests (Playwright drives /usr/bin/chromium, no browser download).
# postgresql: initdb/pg_ctl for the throwaway PostgreSQL clusters of the tests (migrations, backups, prod-check);
#   postgresql-client: pg_dump/pg_restore for `fracture backup` / `fracture restore` on PostgreSQL.
# docker-compose: Debian's 1.29, used only to validate docker-compose.yml (`docker-compose config`).
# orthanc + orthanc-dicomweb: the PACS of the DICOM tests (they start their own on free ports; the package's service
#   is not used); dcmtk (storescu, dsrdump) sends studies and reads reports; dicom3tools (dciodvfy) checks them.
# prometheus: the metrics test scrapes a live system with a real one (its own, on a free port).
set -euo pipefail

# "package:probe" pairs; the probe is a command on PATH or an absolute path that shows it is there.
wanted=(
  "make:make"
  "redis-server:redis-server"
  "chromium:/usr/bin/chromium"
  "fonts-liberation:/usr/share/fonts/truetype/liberation"
  "fonts-dejavu-core:/usr/share/fonts/truetype/dejavu"
  "postgresql:initdb"
  "postgresql-client:pg_dump"
  "docker-compose:docker-compose"
  "orthanc:Orthanc"
  "orthanc-dicomweb:/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
  "dcmtk:storescu"
  "dicom3tools:dciodvfy"
  "prometheus:prometheus"
)

present() {
  local probe=$1
  if [[ $probe == /* ]]; then
    [[ -e $probe ]]
  elif [[ $probe == initdb ]]; then
    # Debian keeps initdb/pg_ctl off PATH, under /usr/lib/postgresql/<major>/bin.
    compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || command -v initdb >/dev/null
  else
    command -v "$probe" >/dev/null
  fi
}

missing=()
for pair in "${wanted[@]}"; do
  present "${pair#*:}" || missing+=("${pair%%:*}")
done

if [[ ${#missing[@]} -eq 0 ]]; then
  echo "system-deps: all present"
  exit 0
fi

if [[ $(id -u) -eq 0 ]]; then
  as_root=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
  as_root=(sudo -n)
else
  echo "system-deps: not root and no password-less sudo; please install: ${missing[*]}" >&2
  echo "system-deps: continuing; tests that need them will skip (or fail under CI=true)" >&2
  exit 0
fi

echo "system-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# Wait for a dpkg lock held by another apt run instead of failing at once.
apt_opts=(-y -q -o DPkg::Lock::Timeout=600)
# The packages' own services (orthanc, redis, postgresql) are not started by apt: the tests and `fracture up` start
# their own processes on their own ports. policy-rc.d is Debian's switch for that, as container images use it.
policy=/usr/sbin/policy-rc.d
made_policy=0
if [[ ! -e $policy ]]; then
  printf '#!/bin/sh\nexit 101\n' | "${as_root[@]}" tee "$policy" >/dev/null
  "${as_root[@]}" chmod +x "$policy"
  made_policy=1
fi
"${as_root[@]}" apt-get "${apt_opts[@]}" update
"${as_root[@]}" apt-get "${apt_opts[@]}" install --no-install-recommends "${missing[@]}"
if [[ $made_policy -eq 1 ]]; then
  "${as_root[@]}" rm -f "$policy"
fi
