"""Spaces with several scores (``scores = ["logit", "prob", "finer(3, 0.6)"]``): Optuna's sampler
chooses a program's score, each score's programs are scored on train captures of that score, and
validation, test and the ``.cam`` files keep it. The default and small spaces never emit a score."""
from __future__ import annotations

import dataclasses
import math
import random
from pathlib import Path

import optuna
import pytest

import sycam
from sycam.compile import CompiledProgram
from sycam.errors import SycamError
from sycam.lang.canon import canonical_hash
from sycam.lang import ast as A
from sycam.lang.parse import parse
from sycam.lang.pretty import pretty
from sycam.search.sanity import CHECKS
from sycam.search.presets import FULL, PRESETS, SMALL, load_space, with_expensive
from sycam.search.space import (DEFAULT, REQUIRED, SCORE_PARAM, Sampler, Space, derive, parse_score, reads_score,
                                score_text)
from sycam.search.study import enqueue, record, sample_candidate
from sycam.workbench import mean_score

TESTS = Path(__file__).resolve().parent
PROB = A.ScoreSpec("prob")


def test_scores_of_the_presets_and_their_texts() -> None:
    assert DEFAULT.scores == SMALL.scores == (A.ScoreSpec(),)
    assert FULL.score_choices == ["logit", "prob", "finer(3, 0.6)"]
    assert FULL.scores[2] == A.ScoreSpec("finer", 3, 0.6)
    assert with_expensive(FULL).scores == FULL.scores
    assert "scores" not in DEFAULT.describe() and "scores logit, prob, finer(3, 0.6)" in FULL.describe()
    # texts round-trip; "score prob;" and "logit" are accepted; logit is always first
    for spec in FULL.scores:
        assert parse_score(score_text(spec)) == spec
    assert parse_score("score prob;") == PROB and parse_score("logit") == A.ScoreSpec()
    assert Space("s", REQUIRED, scores=("prob", "logit", "prob")).scores == (A.ScoreSpec(), PROB)
    with pytest.raises(ValueError, match="must include logit"):
        Space("s", REQUIRED, scores=("prob",))


def _sampled(space: Space, n: int, seed: int = 0) -> tuple[list[A.Program], set[str]]:
    rng = random.Random(seed)
    asked: set[str] = set()

    def choose(name, options):
        asked.add(name)
        return rng.choice(list(options))

    programs = []
    for _ in range(n):
        sampler = Sampler(choose, max_depth=space.max_depth, selections=space.selections, space=space)
        body = sampler.sample().build()
        score = sampler.sample_score(body)
        programs.append(A.Program(body, score=None if score == A.ScoreSpec() else score))
    return programs, asked


def test_the_default_and_small_spaces_never_emit_a_score_line() -> None:
    for space in (DEFAULT, SMALL):
        programs, asked = _sampled(space, 200)
        assert SCORE_PARAM not in asked
        assert all(p.score is None and not pretty(p).startswith("score") for p in programs)
        # Optuna's trials: no score parameter, no score line
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
        for _ in range(30):
            trial = study.ask()
            cand = sample_candidate(trial, space.max_depth, space.selections, space)
            assert "score" not in cand.text
            study.tell(trial, 0.0)
        assert all(SCORE_PARAM not in t.params for t in study.trials)


def test_a_scored_space_asks_the_score_only_of_bodies_that_read_one() -> None:
    space = Space("two", REQUIRED + ("relu_M", "mul_CT"), scores=("logit", "prob"))
    programs, asked = _sampled(space, 300)
    assert SCORE_PARAM in asked
    assert {p.score for p in programs} == {None, PROB}
    assert all(reads_score(p.body) for p in programs if p.score is not None)  # sum_c(A) explains the logit
    assert any(pretty(p).startswith("score prob;\n") for p in programs)
    # a queued reference explains the logit; a recorded score-free program has no score parameter
    study = optuna.create_study()
    gradcam = derive(A.inline_lets(sycam.load("gradcam")), space=space)
    assert gradcam is not None
    enqueue(study, gradcam, "reference:gradcam", space=space)
    assert study.trials[0].system_attrs["fixed_params"][SCORE_PARAM] == "logit"
    plain = derive(parse("sum_c(A)").body, space=space)
    record(study, plain, [0.5], {"program": "sum_c(A)"}, space.selections, space=space)
    assert SCORE_PARAM not in study.trials[-1].params


def test_a_search_over_two_scores_scores_each_on_its_own_captures(tmp_path, monkeypatch) -> None:
    """A few Optuna trials over logit and prob: the prob trials' exact train values are
    ``Workbench.score`` on a train bench captured for prob (exactly), their test values too, and
    the ``.cam`` files of prob hall rows parse back with ``score prob;``."""
    from sycam.search.synthesize import SynthConfig, Synthesis

    monkeypatch.syspath_prepend(str(TESTS))
    space = Space("two", REQUIRED + ("relu_M", "mul_CT"), scores=("logit", "prob"))
    cfg = SynthConfig(metrics=["iou"], model="tiny_models:bundle", candidates=12, out=str(tmp_path / "run"),
                      train_limit=16, val_limit=16, test_limit=16, batch_size=16, max_size=4, references=("gradcam",),
                      progress=False, sanity="require", space=space, enumerate=False)
    synthesis = Synthesis(cfg)
    result = synthesis.run()
    scores = result["stats"]["scores"]
    assert set(synthesis.scores.sanities) == {A.ScoreSpec(), PROB}  # the sampler's sanity constraints, per score
    assert scores["prob"]["sampled"] and scores["prob"]["capture_seconds"] >= 0 and scores["prob"]["exact"] > 0
    assert result["stats"]["exact"] == scores["logit"]["exact"] + scores["prob"]["exact"]  # every score's racer counts
    train_request = synthesis.scores.train.request
    prob_bench = synthesis.bench("train", dataclasses.replace(train_request, score=PROB))
    logit_bench = synthesis.scores.train
    study = optuna.load_study(study_name=cfg.study_name, storage=f"sqlite:///{tmp_path / 'run' / 'study.db'}")
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    prob = [t for t in done if t.params.get(SCORE_PARAM) == "prob" and reads_score(parse(t.user_attrs["program"]).body)]
    assert prob, [t.user_attrs["program"] for t in done]
    for t in prob:
        program = parse(t.user_attrs["program"])
        assert t.user_attrs["program"].startswith("score prob;\n") and program.score == PROB
        compiled = prob_bench.compile(program)
        assert t.values[0] == mean_score(prob_bench.score(compiled, synthesis.metrics)["iou"])
        # under the logit's captures the same body scores otherwise: the capture was not shared
        plain = logit_bench.compile(A.Program(program.body))
        assert t.values[0] != mean_score(logit_bench.score(plain, synthesis.metrics)["iou"])
    # the hall's .cam files say what their rows explain
    for r in result["hall_of_fame"]:
        assert sycam.load(tmp_path / "run" / f"{r['name']}.cam").score == parse(r["program"]).score
    # the final phase over prob programs only (the references explain the logit): validation and
    # test are captured per score, and the .cam files keep the score
    study = optuna.create_study(direction="maximize")
    for text, value in (("score prob;\nrelu(sum_c(G))", 0.9), ("score prob;\nsum_c(mean_hw(G) * A)", 0.8)):
        program = parse(text)
        record(study, derive(program.body, space=space), [value],
               {"program": text, "size": A.size(program.body), "canon": canonical_hash(program)}, space.selections,
               space=space, score=PROB)
    assert study.trials[0].params[SCORE_PARAM] == "prob"
    synthesis.cfg.sanity = "flag"
    final = synthesis._select_and_report(study, logit_bench)
    hall = final["hall_of_fame"]
    scored_rows = [r for r in hall if r["program"].startswith("score prob;")]
    assert scored_rows and len(scored_rows) == len(hall), [r["program"] for r in hall]
    assert all(math.isfinite(r["test"]["iou"]) for r in final["references"])  # gradcam scored beside them
    assert all(set(r["sanity"]) == set(CHECKS) for r in hall)  # checked on prob's validation captures
    for r in scored_rows:
        program = parse(r["program"])
        test_bench = synthesis.bench("test", CompiledProgram(program, logit_bench.resolver).request)
        compiled = test_bench.compile(program)
        assert r["test"]["iou"] == pytest.approx(mean_score(test_bench.score(compiled, synthesis.metrics)["iou"]),
                                                 abs=1e-6)
        cam = sycam.load(tmp_path / "run" / f"{r['name']}.cam")
        assert cam.score == PROB and "score prob;" in (tmp_path / "run" / f"{r['name']}.cam").read_text()
    assert (tmp_path / "run" / "overlays.png").is_file()
    # --no-worse-than a logit program: the suite on test scores the prob best on prob's captures
    weak = tmp_path / "weak.cam"
    weak.write_text("neg(sum_c(A))\n")
    synthesis.cfg.no_worse_than, synthesis.cfg.suite = str(weak), ("iou", "energy_pg")
    final = synthesis._select_and_report(study, logit_bench)
    best = final["hall_of_fame"][0]
    assert best["program"].startswith("score prob;") and final["no_worse"]["test"]["iou"]["best"] == best["test"]["iou"]


def test_score_racers_keep_their_own_twins(tmp_path, monkeypatch) -> None:
    """The same body under two scores: two racers, values of each score's own captures, and no
    observational twin across them."""
    from sycam.capture import CaptureRequest
    from sycam.search.loop import Racer
    from sycam.search.racing import Rung, RungBench
    from sycam.search.scores import ScoreBenches, cost_line
    from sycam.search.study import Candidate
    from sycam.search.synthesize import SynthConfig, Synthesis, _search_request

    monkeypatch.syspath_prepend(str(TESTS))
    cfg = SynthConfig(metrics=["iou"], model="tiny_models:bundle", out=str(tmp_path / "run"), train_limit=16,
                      val_limit=16, test_limit=16, batch_size=16, progress=False)
    synthesis = Synthesis(cfg)
    resolver = synthesis.bench("train", CaptureRequest(layers=())).resolver
    train = synthesis.bench("train", _search_request(resolver, A.ScoreSpec(), ("stages",))).load()
    rungs = [Rung(16, None, exact=True)]
    racer = Racer(RungBench(train, rungs, synthesis.metrics), synthesis.metrics)
    benches = ScoreBenches(train, racer, rungs, synthesis.metrics, 0, lambda request: synthesis.bench("train", request))
    values = {}
    for spec in (A.ScoreSpec(), PROB):
        program = A.Program(parse("relu(sum_c(G))").body, score=None if spec == A.ScoreSpec() else spec)
        cand = Candidate(program, pretty(program), A.size(program.body), canonical_hash(program), {})
        values[spec] = benches.racer(spec).evaluate_trial(cand, None)
        bench = benches.racer(spec).bench.bench
        assert values[spec][0] == mean_score(bench.score(bench.compile(program), synthesis.metrics)["iou"])
    assert values[A.ScoreSpec()] != values[PROB]
    with pytest.raises(SycamError, match="explains 'score prob;' cannot be scored on captures of 'score logit;'"):
        train.score(train.compile(parse("score prob;\nrelu(sum_c(G))")), synthesis.metrics)  # never silently
    assert benches.racer(PROB) is not racer and benches.racer(PROB).bench.bench.request.score == PROB
    assert all(r.stats.observational_duplicates == 0 for r in benches.racers.values())
    stats = benches.as_dict((A.ScoreSpec(), PROB, A.ScoreSpec("finer", 3, 0.6)))
    assert stats["prob"]["exact"] == 1 and not stats["finer(3, 0.6)"]["sampled"]
    line = cost_line(stats)
    assert line.startswith("other scores, one train capture each") and "prob " in line and "ms/image" in line
    assert "finer(3, 0.6) not sampled" in line


def test_space_files_with_scores(tmp_path) -> None:
    toml = tmp_path / "mine.toml"
    toml.write_text('base = "small"\nscores = ["logit", "prob", "finer(5, 0.6)"]\n')
    space = load_space(str(toml))
    assert space.scores == (A.ScoreSpec(), PROB, A.ScoreSpec("finer", 5, 0.6))
    assert space.productions == SMALL.productions
    js = tmp_path / "mine.json"
    js.write_text('{"base": "full"}')
    assert load_space(str(js)).scores == FULL.scores  # the base's scores
    assert PRESETS["default"].scores == (A.ScoreSpec(),)




def test_workers_score_stats_merge() -> None:
    from sycam.search.scores import merge_workers

    a = {"logit": {"sampled": True, "images": 16, "exact": 3}, "prob": {"sampled": False, "images": 16}}
    b = {"logit": {"sampled": True, "images": 16, "exact": 2},
         "prob": {"sampled": True, "images": 16, "capture_seconds": 0.5, "exact": 1}}
    assert merge_workers([a, b]) == {"logit": {"sampled": True, "images": 16, "exact": 5},
                                     "prob": {"sampled": True, "images": 16, "capture_seconds": 0.5, "exact": 1}}
