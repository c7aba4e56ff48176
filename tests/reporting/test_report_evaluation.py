"""The organizer's report of a real evaluation: busybox teams run on the engine, then `report --pdf` in Chromium."""

import re
import subprocess

import numpy as np
import pytest
from teams import COPY_ANSWERS, build_archive, make_cases
from test_report import chromium_or_skip

from flare_eval.cli import main
from flare_eval.io import write_label_map

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

TEAMS = {
    "good": COPY_ANSWERS,
    "slow": "sleep 2\n" + COPY_ANSWERS,
    "crashing": "echo boom >&2\nexit 3\n",
    # Leaves the second case without output.
    "partial": 'cp /answers/case0.nii.gz /workspace/outputs/case0.nii.gz 2>/dev/null || true\n',
}


def test_report_of_an_evaluation_shows_every_view_and_prints_to_pdf(engine, tmp_path):
    browser = chromium_or_skip()
    images, labels, answers = make_cases(tmp_path, n_cases=2)
    for case, answer in answers.items():
        write_label_map(answer, np.diag([0.8, 0.8, 2.5, 1.0]), tmp_path / "answers" / f"{case}.nii.gz")
    for team, script in TEAMS.items():
        build_archive(engine, script, tmp_path / "answers", tmp_path / "subs" / f"{team}.tar",
                      f"flare-eval-test/report-{team}:latest")
    out = tmp_path / "evaluation"
    code = main(["evaluate", str(tmp_path / "subs"), "--inputs", str(images), "--labels", str(labels), "--out",
                 str(out), "--gpus", "none", "--timeout", "120", "--samples", "50", "--no-progress"])
    assert code == 1  # the crashing and partial teams
    report = tmp_path / "report"
    names = tmp_path / "names.csv"
    names.write_text("team,name\ngood,Team 1\nslow,Team 2\ncrashing,Team 3\npartial,Team 4\n")
    assert main(["report", str(out), "--out", str(tmp_path / "anonymous"), "--title", "Final results",
                 "--display-names", str(names), "--paper", "a4"]) == 0
    anonymous = (tmp_path / "anonymous" / "index.html").read_text()
    assert "<h1>Final results</h1>" in anonymous and "Team 3" in anonymous
    assert not any(re.search(rf"\b{team}\b", anonymous) for team in ("good", "slow", "crashing", "partial"))
    assert main(["report", str(out), "--out", str(report), "--pdf"]) == 0
    text = (report / "index.html").read_text()
    assert "120 s per case (in force in this run)" in text  # not the preset's 3600 s
    method = text[text.index("How this ranking was computed"):text.index("Failures</h2>")]
    assert "Rank, then aggregate" in method and "ties.method" in method
    for metric, weight in (("DSC", "1"), ("NSD", "1"), ("Time", "1"), ("AUC_GPU", "0.5"), ("AUC_CPU", "0.5")):
        assert re.search(rf"<td>{metric}</td><td>\w+</td><td>{weight}</td>", method), metric
    for anchor in re.findall(r'<section id="([^"]+)">', text):
        assert f'href="#{anchor}"' in text
    assert not re.search(r'href="(\.\./|/|file:)', text)  # nothing outside the report folder
    for title in ("Run facts", "Leaderboard", "Failures", "Case values per team", "Podium", "Ranking stability",
                  "The ranking under other methods", "Significance", "Accuracy per organ", "Resources per team"):
        assert re.search(rf"<h2>\d+\. {re.escape(title)}", text), title
    assert re.search(r"crashing</td>\s*<td>case0</td>\s*<td>crashed</td>", text)
    assert re.search(r"partial</td>\s*<td>case1</td>\s*<td>no_output</td>", text)
    assert "GPU not measured" in text and "4 teams, 2 cases" in text
    assert "image ID" in text and re.search(r"<td>[0-9a-f]{12}</td>", text)  # the measured images, by ID
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
             "--disable-background-networking", "--disable-component-update",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*flags, "--virtual-time-budget=10000", "--dump-dom", (report / "index.html").as_uri()],
                         capture_output=True, text=True, timeout=180)
    loaded = re.search(r'data-figures-loaded="(\d+)/(\d+)"', dom.stdout)
    assert loaded and loaded.group(1) == loaded.group(2) and int(loaded.group(2)) >= 15, dom.stderr[-2000:]
    pdf = (report / "report.pdf").read_bytes()
    assert pdf.startswith(b"%PDF") and len(re.findall(rb"/Type\s*/Page[^s]", pdf)) >= 3
    from pypdf import PdfReader

    # No page ends with a section heading: each heading prints on the page of its section's first block.
    for number, page in enumerate(PdfReader(report / "report.pdf").pages, start=1):
        lines = [line.strip() for line in (page.extract_text() or "").splitlines() if line.strip()]
        assert not (lines and re.match(r"^\d+\. [A-Z]", lines[-1])), (number, lines[-1])
