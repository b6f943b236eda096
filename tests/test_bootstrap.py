"""scripts/test-packages, the package step of scripts/bootstrap, on a fresh machine and again.

apt-get and debconf-set-selections are stubbed for this test only (a script on PATH that logs its
arguments and "installs" by creating the binaries the step looks for); the step itself runs as
written, in a real bash, with and without an existing policy-rc.d.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STEP = ROOT / "scripts" / "test-packages"

APT_STUB = """#!/bin/sh
echo "apt-get $* policy=$( [ -e "$CAREBRIDGE_SBIN/policy-rc.d" ] && echo present || echo absent)" \\
    >> "$APT_LOG"
if [ "$1" = install ]; then
    for bin in "$CAREBRIDGE_SBIN/dovecot" "$CAREBRIDGE_SBIN/smtp-source" "$CAREBRIDGE_BIN/chromium"
    do
        printf '#!/bin/sh\\n' > "$bin"; chmod +x "$bin"
    done
fi
"""


def _machine(tmp_path: Path, *, policy: bool) -> dict[str, str]:
    stubs, sbin, bin_ = tmp_path / "stubs", tmp_path / "sbin", tmp_path / "bin"
    for d in (stubs, sbin, bin_):
        d.mkdir()
    for name, text in (
        ("apt-get", APT_STUB),
        ("debconf-set-selections", "#!/bin/sh\ncat >/dev/null\n"),
    ):
        (stubs / name).write_text(text)
        (stubs / name).chmod(0o755)
    if policy:
        (sbin / "policy-rc.d").write_text("#!/bin/sh\nexit 101\n")
        (sbin / "policy-rc.d").chmod(0o755)
    return {
        **os.environ,
        "PATH": f"{stubs}:{os.environ['PATH']}",
        "CAREBRIDGE_SBIN": str(sbin),
        "CAREBRIDGE_BIN": str(bin_),
        "APT_LOG": str(tmp_path / "apt.log"),
    }


def _run(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(STEP)], env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(os.geteuid() != 0, reason="the step installs only as root")
@pytest.mark.parametrize("policy", [True, False], ids=["policy-rc.d-exists", "no-policy-rc.d"])
def test_package_step_succeeds_twice_with_or_without_policy_rc_d(tmp_path: Path, policy: bool):
    env = _machine(tmp_path, policy=policy)
    first = _run(env)
    assert first.returncode == 0, first.stderr
    log = (tmp_path / "apt.log").read_text().splitlines()
    assert [line.split()[1] for line in log] == ["update", "install"]
    # Services must not start during the install: a policy-rc.d is in place while apt runs.
    assert all(line.endswith("policy=present") for line in log)
    assert "dovecot-imapd" in log[1] and "postfix" in log[1] and "chromium" in log[1]
    # One we made is gone afterwards; one that was there stays, untouched.
    policy_file = tmp_path / "sbin" / "policy-rc.d"
    assert policy_file.exists() == policy
    if policy:
        assert policy_file.stat().st_mode & stat.S_IXUSR

    second = _run(env)  # everything is installed now: nothing to do, still success
    assert second.returncode == 0, second.stderr
    assert len((tmp_path / "apt.log").read_text().splitlines()) == 2


@pytest.mark.skipif(os.geteuid() != 0, reason="the step installs only as root")
def test_a_failed_install_still_removes_the_policy_file_it_made(tmp_path: Path):
    env = _machine(tmp_path, policy=False)
    (tmp_path / "stubs" / "apt-get").write_text("#!/bin/sh\nexit 100\n")
    result = _run(env)
    assert result.returncode != 0
    assert not (tmp_path / "sbin" / "policy-rc.d").exists()
