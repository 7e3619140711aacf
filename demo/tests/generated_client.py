"""A client generated from the demo's served /openapi.json calls the demo.

Run by demo/tests/demo.rs while the demo is up:

    python3 generated_client.py < ARGS_JSON

ARGS_JSON (on stdin: tokens stay out of argv) holds the base URL, the school id, the
class and student ids the demo printed, and a token per role. The generator is openapi-python-client (PyPI, pinned below and in
scripts/install-deps.sh): it runs offline and reads OpenAPI 3.1. The generated package is
byte-compiled, imported, and its typed functions are called; every reply must parse into
the generated model of its documented type.
"""

import importlib.metadata
import json
import pathlib
import subprocess
import sys
import tempfile
import urllib.request
import uuid

GENERATOR_VERSION = "0.29.1"


def main() -> None:
    args = json.load(sys.stdin)
    base = args["base"]
    found = importlib.metadata.version("openapi-python-client")
    assert found == GENERATOR_VERSION, (
        f"openapi-python-client {GENERATOR_VERSION} expected, found {found}: "
        "run scripts/install-deps.sh"
    )
    work = pathlib.Path(tempfile.mkdtemp(prefix="edumind-client-"))
    try:
        run(base, args, work)
    finally:
        subprocess.run(["rm", "-rf", str(work)], check=False)


def run(base: str, args: dict, work: pathlib.Path) -> None:
    doc = work / "openapi.json"
    with urllib.request.urlopen(f"{base}/openapi.json", timeout=10) as r:
        doc.write_bytes(r.read())
    config = work / "config.json"
    config.write_text(json.dumps({"package_name_override": "edumind_client",
                                  "project_name_override": "edumind-client"}))
    out = subprocess.run(
        ["openapi-python-client", "generate", "--path", str(doc), "--config", str(config),
         "--meta", "none", "--output-path", str(work / "edumind_client")],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    # Generation warnings mean a part of the document could not be typed.
    assert "Warning" not in out.stdout + out.stderr, out.stdout + out.stderr
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(work / "edumind_client")],
                   check=True)
    sys.path.insert(0, str(work))

    from edumind_client import AuthenticatedClient
    from edumind_client.api.default import (classes_roster_get, students_list,
                                            students_progress, users_list)
    from edumind_client.models import Progress, Roster, StudentPage, UserPage

    def client(role: str) -> AuthenticatedClient:
        return AuthenticatedClient(base_url=base, token=args["tokens"][role],
                                   raise_on_unexpected_status=True)

    school = args["school"]
    users = users_list.sync_detailed(tenant=school, client=client("school_admin"))
    assert users.status_code == 200 and isinstance(users.parsed, UserPage), users
    assert len(users.parsed.items) == 7, users.parsed
    assert all(str(u.school_id) == school for u in users.parsed.items)

    roster = classes_roster_get.sync_detailed(tenant=school, id=uuid.UUID(args["class"]),
                                              client=client("teacher"))
    assert roster.status_code == 200 and isinstance(roster.parsed, Roster), roster
    assert len(roster.parsed.students) == 3, roster.parsed

    progress = students_progress.sync_detailed(tenant=school, id=uuid.UUID(args["student"]),
                                               client=client("student"))
    assert progress.status_code == 200 and isinstance(progress.parsed, Progress), progress
    assert progress.parsed.xp_points == 80, progress.parsed

    mine = students_list.sync_detailed(tenant="selfservice", client=client("selfservice"))
    assert mine.status_code == 200 and isinstance(mine.parsed, StudentPage), mine
    assert len(mine.parsed.items) == 1 and mine.parsed.items[0].class_ids == [], mine.parsed
    print("generated client: 4 typed calls answered as the demo promised")


if __name__ == "__main__":
    main()
