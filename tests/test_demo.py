import json

from robalign.cli import main


def test_demo_on_tiny_model_writes_report_and_plot(tmp_path, capsys):
    code = main(["demo", "--model", "tiny-llama", "--methods", "dpo,rdpo", "--quick", "--steps", "2",
                 "--out", str(tmp_path)])
    assert code == 0
    rows = json.loads((tmp_path / "results.json").read_text())
    assert [r["method"] for r in rows] == ["dpo", "rdpo"]
    assert all(0 <= r["acc_M_after"] <= 1 for r in rows)
    assert (tmp_path / "demo_accuracy.png").stat().st_size > 1000
    assert "| dpo |" in (tmp_path / "report.md").read_text()
    assert "| rdpo |" in capsys.readouterr().out


def test_demo_rejects_unknown_method(tmp_path, capsys):
    assert main(["demo", "--model", "tiny-llama", "--methods", "dpo,nope", "--out", str(tmp_path)]) == 2
    assert "nope" in capsys.readouterr().err
