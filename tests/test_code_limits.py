"""The package keeps its size limits (tests/code_limits.py, printed by `make limits`):
no module over 400 lines, no function over 60 lines or taking more than 8 parameters
(click commands excepted), no import circle inside mer_tune."""

import textwrap

from code_limits import breaches


def test_the_package_keeps_its_size_limits():
    assert breaches() == []


def test_the_checker_finds_each_kind_of_breach(tmp_path):
    pkg = tmp_path / "mer_tune"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "big.py").write_text("x = 1\n" * 401)
    body = "".join(f"    a{i} = {i}\n" for i in range(60))
    (pkg / "long.py").write_text(f"def long():\n{body}")
    params = ", ".join(f"p{i}" for i in range(9))
    (pkg / "wide.py").write_text(
        textwrap.dedent(f"""
        import click

        def wide(self, {params}):
            pass

        @click.command()
        def command({params}):
            pass
        """)
    )
    (pkg / "a.py").write_text("def f():\n    from mer_tune import b\n")
    (pkg / "b.py").write_text("from mer_tune.a import f\n")
    found = breaches(pkg)
    assert "mer_tune/big.py: 401 lines (limit 400)" in found
    assert "mer_tune/long.py:1 long: 61 lines (limit 60)" in found
    assert "mer_tune/wide.py:4 wide: 9 parameters (limit 8)" in found  # self not counted
    assert not any(" command:" in line for line in found)  # click commands excepted
    assert "import circle: mer_tune.a -> mer_tune.b" in found
    assert len(found) == 4
