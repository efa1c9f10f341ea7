"""The repository stands alone: nothing in it reads or points at paths outside its root (the sample
parcels live in examples/parcels/, the recorded CDSE replies in tests/data/cdse/), and the teardown
line the rehearsal prints works as printed in a new shell in the repository root."""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path, PurePosixPath

import yaml

REPO = Path(__file__).resolve().parent.parent

# References to places outside the repository, in any text file. (Written so that this file does not
# match them itself.)
OUTSIDE = [
    (re.compile(r"\.\./shared\b"), "a path beside the repository"),
    (re.compile(r"\bshared/(?:fixtures|reference)\b"), "the reference folder outside the repository"),
    (re.compile(r"\b(?:REPO|ROOT)\.parents?\b"), "the folder above the repository root"),
    (re.compile(r"parent\.parent\s*/\s*[\"']shared[\"']"), "a folder beside the repository"),
    (re.compile(r"[\"']shared[\"']\s*/\s*[\"']fixtures[\"']"), "the fixtures folder outside the repository"),
    (re.compile(r"\bCBM_SHARED_FIXTURE[S]\b"), "the variable that pointed outside the repository"),
]
# Python: Path(__file__)[.resolve()].parent.parent... or .parents[N] climbing above the root.
PY_PARENT_CHAIN = re.compile(r"Path\(__file__\)(?:\.resolve\(\)|\.absolute\(\))?((?:\.parent\b(?!s))+)")
PY_PARENTS_INDEX = re.compile(r"Path\(__file__\)(?:\.resolve\(\)|\.absolute\(\))?\.parents\[(\d+)\]")
# Shell: a run of `..` segments. After a `$(dirname ...)` it counts from the script's folder; anywhere
# else from the repository root (every script changes to the root first).
DOTDOT_RUN = re.compile(r"(?<![\w.])((?:\.\.(?:/|(?=$|[\s\"'`);:}])))+)")
SCRIPT_NAMES = ("run", ".ci/run", "scripts/*.sh", "Makefile", "*/Makefile", "*.mk")


def repo_files(root: Path = REPO) -> list[Path]:
    """The repository's files: what git tracks plus what it would add (not ignored), or, in a copy of
    the tree without .git, every file that .gitignore does not exclude."""
    if (root / ".git").exists() and shutil.which("git"):
        out = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             capture_output=True, check=True).stdout.decode()
        return sorted(root / name for name in out.split("\0") if name and (root / name).is_file())
    patterns = []
    if (root / ".gitignore").is_file():
        patterns = [p.strip() for p in (root / ".gitignore").read_text().splitlines()
                    if p.strip() and not p.startswith("#")]
    found = []
    for folder, dirs, files in os.walk(root):
        rel_folder = PurePosixPath(Path(folder).relative_to(root).as_posix())
        dirs[:] = [d for d in dirs if d != ".git" and not _ignored(rel_folder / d, True, patterns)]
        found += [Path(folder) / f for f in files if not _ignored(rel_folder / f, False, patterns)]
    return sorted(found)


def _ignored(rel: PurePosixPath, is_dir: bool, patterns: list[str]) -> bool:
    """Whether a .gitignore pattern excludes `rel` itself (its folders were checked on the way down)."""
    for pattern in patterns:
        if pattern.endswith("/") and not is_dir:
            continue
        pat = pattern.strip("/")
        target = rel.as_posix() if "/" in pattern.rstrip("/") else rel.name
        if fnmatch.fnmatchcase(target, pat):
            return True
    return False


def text_of(path: Path) -> str | None:
    data = path.read_bytes()
    if b"\0" in data[:8192]:
        return None  # binary (shapefile, GeoPackage, ...)
    return data.decode("utf-8", errors="replace")


def is_script(rel: PurePosixPath, text: str) -> bool:
    first = text.split("\n", 1)[0]
    return any(fnmatch.fnmatchcase(rel.as_posix(), p) for p in SCRIPT_NAMES) or (
        first.startswith("#!") and re.search(r"\b(?:ba|da|z)?sh\b", first) is not None)


def outside_references(root: Path = REPO) -> list[str]:
    """`file:line: text  (why)` for every reference to a path outside `root`."""
    problems = []
    for path in repo_files(root):
        text = text_of(path)
        if text is None:
            continue
        rel = PurePosixPath(path.relative_to(root).as_posix())
        depth = len(rel.parts) - 1   # folders between the root and the file
        script = is_script(rel, text)
        for n, line in enumerate(text.splitlines(), 1):
            why = [reason for rx, reason in OUTSIDE if rx.search(line)]
            if rel.suffix == ".py":
                why += ["climbs above the repository root from " + str(rel)
                        for m in PY_PARENT_CHAIN.finditer(line) if m.group(1).count(".parent") > depth + 1]
                why += ["climbs above the repository root from " + str(rel)
                        for m in PY_PARENTS_INDEX.finditer(line) if int(m.group(1)) > depth]
            if script and not line.lstrip().startswith("#"):
                for m in DOTDOT_RUN.finditer(line):
                    from_script_folder = line[:m.start()].endswith(")/")
                    if m.group(1).count("..") > (depth if from_script_folder else 0):
                        why.append("a `..` climb out of the repository root")
            problems += [f"{rel}:{n}: {line.strip()[:120]}  ({reason})" for reason in why]
    return problems


def test_nothing_points_outside_the_repository():
    problems = outside_references()
    assert not problems, "references to paths outside the repository:\n" + "\n".join(problems)


def test_the_scan_finds_each_kind(tmp_path):
    """A planted tree (no .git: the .gitignore walk) with one reference of each kind, and allowed climbs."""
    up, q, dot, fx = "..", '"', ".", "fixtures"   # pieces, so that this file does not match the rules itself
    (tmp_path / ".gitignore").write_text("/build/\n*.log\n")
    (tmp_path / "scripts").mkdir()
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / "build").mkdir()
    plants = {
        "docs.md": f"see {up}/shared/{fx}/cdse for the replies\n",
        "pkg/a.py": f"DATA = REPO{dot}parent / {q}other{q}\nX = ROOT{dot}parent\n",
        "pkg/b.py": f"D = Path(__file__){dot}parent{dot}parent / {q}shared{q} / {q}{fx}{q}\n",
        "pkg/sub/c.py": f"R = Path(__file__){dot}resolve(){dot}parents[3]\n"
                        f"S = Path(__file__){dot}resolve(){dot}parent{dot}parent{dot}parent{dot}parent\n",
        "run": f"#!/usr/bin/env bash\ncd {up}\n",
        "scripts/x.sh": f"#!/bin/sh\nhere=$(cd \"$(dirname \"$0\")/{up}/{up}\" && pwd)\n",
        "tool": f"#!/bin/bash\nsource {up}/env.sh\n",
    }
    allowed = {
        "pkg/ok.py": f"REPO = Path(__file__){dot}resolve(){dot}parent{dot}parent\n"
                     f"R2 = Path(__file__){dot}resolve(){dot}parents[1]\n",
        "scripts/ok.sh": f"#!/bin/sh\ncd \"$(dirname \"$0\")/{up}\"\nfor i in {{1..3}}; do :; done\n",
        "notes.md": f"see {up}/example/deployment.yml\n",
        "build/ignored.py": f"X = REPO{dot}parent\n",
        "x.log": f"{up}/shared\n",
        "blob.bin": f"\0{up}/shared",
    }
    for name, text in {**plants, **allowed}.items():
        (tmp_path / name).write_text(text)
    found = outside_references(tmp_path)
    where = sorted({p.split(": ", 1)[0] for p in found})
    assert where == ["docs.md:1", "pkg/a.py:1", "pkg/a.py:2", "pkg/b.py:1", "pkg/sub/c.py:1", "pkg/sub/c.py:2",
                     "run:2", "scripts/x.sh:2", "tool:2"], found


# -- the teardown line the rehearsal prints ----------------------------------------------------
def _parts(line: str) -> list[tuple[dict[str, str], list[str]]]:
    """The commands of a `A && B` line, each as (leading VAR=value assignments, argv)."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands, current = [], []
    for token in [*lexer, "&&"]:
        if token == "&&":
            assigned = {}
            while current and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", current[0]):
                name, _, value = current.pop(0).partition("=")
                assigned[name] = value
            commands.append((assigned, current))
            current = []
        else:
            assert token not in (";", "|", "||", "&"), line
            current.append(token)
    return commands


def test_teardown_line_carries_what_it_needs(tmp_path):
    from sandbox.cloud import CLOUD_NAME, Sandbox
    from sandbox.rehearsal import SPEC, teardown_line

    sandbox = Sandbox(tmp_path / "sandbox state")
    spec = SPEC.relative_to(REPO)
    state_home = str(tmp_path / "state home")
    line = teardown_line(sandbox, spec, {"XDG_STATE_HOME": state_home, "PATH": "/nowhere", "OS_CLOUD": "other"})
    (down_env, down), (stop_env, stop) = _parts(line)

    assert down_env == {"OS_CLIENT_CONFIG_FILE": str(sandbox.clouds_yaml), "OS_CLOUD": CLOUD_NAME,
                        "XDG_STATE_HOME": state_home}, line
    assert yaml.safe_load(SPEC.read_text())["cloud"] == CLOUD_NAME
    assert stop_env == {"XDG_STATE_HOME": state_home}, line
    assert down[1:] == ["down", str(spec), "--yes"] and (REPO / down[2]).is_file(), line
    assert stop[1:] == ["sandbox", "stop", "--purge"], line
    for program in (down[0], stop[0]):
        assert os.access(REPO / program, os.X_OK) and (REPO / program).is_file(), f"{program}: not runnable; {line}"

    plain = teardown_line(sandbox, spec, {"PATH": "/nowhere"})
    assert [env for env, _ in _parts(plain)] == [sandbox.env, {}], plain


def test_teardown_line_reaches_the_sandbox_cloud_from_a_new_shell(tmp_path):
    """Pasted into a bare shell (no OS_* variables, no venv on PATH) in the repository root, `cbm down`
    reads the sandbox's clouds.yaml and cloud: here they name a closed port, and the error says so."""
    from sandbox.cloud import CLOUD_NAME, Sandbox
    from sandbox.rehearsal import SPEC, teardown_line

    sandbox = Sandbox(tmp_path / "sandbox")
    sandbox.state_dir.mkdir()
    auth_url = "http://127.0.0.1:9/identity/v3"   # the discard port: nothing listens there
    sandbox.clouds_yaml.write_text(yaml.safe_dump({"clouds": {CLOUD_NAME: {
        "auth_type": "password", "region_name": "RegionOne", "identity_api_version": 3,
        "auth": {"auth_url": auth_url, "username": "u", "password": "p", "project_name": "p",
                 "user_domain_name": "Default", "project_domain_name": "Default"}}}}))
    line = teardown_line(sandbox, SPEC.relative_to(REPO), {"XDG_STATE_HOME": str(tmp_path / "state")})
    bare = {"HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(["bash", "-c", line], env=bare, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0, proc
    assert "127.0.0.1:9" in proc.stderr + proc.stdout, proc
    assert "Traceback" not in proc.stderr, proc.stderr
