"""Publishing: the Pages workflow runs the README's commands; make publish pushes a gh-pages branch."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
GIT = shutil.which("git")
MAKE = shutil.which("make")


def _readme_commands() -> list[str]:
    """The commands of the README's first code block (``make reproduce``, ``make test``)."""
    block = re.search(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)[1]
    return [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]


def test_pages_workflow_builds_with_the_readme_commands_and_deploys_the_html():
    wf = yaml.safe_load((ROOT / ".github" / "workflows" / "book.yml").read_text())
    assert set(wf[True]["push"]["branches"]) == {"main"}  # YAML reads the key "on" as True
    steps = {name: job["steps"] for name, job in wf["jobs"].items()}
    runs = [s["run"].strip() for job in steps.values() for s in job if "run" in s]
    commands = _readme_commands()
    assert {"make reproduce", "make test"} <= set(commands)
    assert sorted(runs) == sorted(commands), f"workflow runs {runs}, the README shows {commands}"
    uses = {s["uses"].split("@")[0]: s for job in steps.values() for s in job if "uses" in s}
    assert uses["actions/upload-pages-artifact"]["with"]["path"] == "_build/html"
    assert "actions/deploy-pages" in uses
    deploy = wf["jobs"]["deploy"]
    assert deploy["permissions"] == {"pages": "write", "id-token": "write"} and "main" in deploy["if"]
    assert wf["jobs"]["book"]["needs"] == "test" and deploy["needs"] == "book"


def _git(*args, cwd, env):
    return subprocess.run([GIT, *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def repo(tmp_path):
    """A project clone with one commit, a built site and a bare 'GitHub' remote."""
    if not (GIT and MAKE):
        pytest.skip("git and make are needed")
    env = dict(os.environ, HOME=str(tmp_path), GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.org",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.org", GIT_CONFIG_NOSYSTEM="1")
    remote, work = tmp_path / "remote.git", tmp_path / "work"
    _git("init", "-q", "--bare", str(remote), cwd=tmp_path, env=env)
    _git("init", "-q", str(work), cwd=tmp_path, env=env)
    (work / "README.md").write_text("project\n")
    _git("add", "README.md", cwd=work, env=env)
    _git("commit", "-q", "-m", "start", cwd=work, env=env)
    site = work / "_build" / "html"
    site.mkdir(parents=True)
    (site / "index.html").write_text("<html>book one</html>\n")
    (site / "_static").mkdir()
    (site / "_static" / "style.css").write_text("body {}\n")
    return work, remote, env


def _publish(work, remote, env, site="_build/html"):
    cmd = [MAKE, "--no-print-directory", "-f", str(ROOT / "Makefile"), "publish", f"BIN={Path(sys.executable).parent}",
           f"PAGES_REMOTE={remote}", f"SITE_HTML={site}"]
    return subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)


def test_make_publish_pushes_the_site_to_gh_pages(repo):
    work, remote, env = repo
    res = _publish(work, remote, env)
    assert res.returncode == 0, res.stdout + res.stderr
    files = _git("ls-tree", "-r", "--name-only", "gh-pages", cwd=remote, env=env).split()
    assert sorted(files) == [".nojekyll", "_static/style.css", "index.html"]
    assert _git("show", "gh-pages:index.html", cwd=remote, env=env) == "<html>book one</html>\n"
    assert "Publish the book built from" in _git("log", "-1", "--format=%s", "gh-pages", cwd=remote, env=env)
    assert _git("status", "--porcelain", cwd=work, env=env).split() == ["??", "_build/"]  # main branch untouched
    # a rebuilt site replaces the published one
    (work / "_build" / "html" / "index.html").write_text("<html>book two</html>\n")
    assert _publish(work, remote, env).returncode == 0
    assert _git("show", "gh-pages:index.html", cwd=remote, env=env) == "<html>book two</html>\n"


def test_make_publish_refuses_without_a_built_site(repo):
    work, remote, env = repo
    res = _publish(work, remote, env, site="_build/missing")
    assert res.returncode != 0
    assert "make publish: _build/missing/index.html does not exist: build the book first" in res.stderr
    assert "gh-pages" not in _git("branch", "--list", cwd=remote, env=env)
