"""What the bad-input and tamper tests share: run the CLI in-process, and check that an error is one line."""
from pathlib import Path

from minimuse.cli import main


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `minimuse ARGV`; argparse's own errors exit instead of returning."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line(code, err, *fragments):
    """Exit code 2 and one `minimuse: error: ...` line on stderr holding every fragment, no traceback."""
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("minimuse: error: "), err
    for f in fragments:
        assert f in lines[0], lines[0]


def snapshot(root: Path) -> dict:
    """Every file under root with its bytes: what a refused command must leave unchanged."""
    return {p.relative_to(root): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}
