"""core.reward_models: the two heads, loading checks, batched scoring, the resumable reward run,
and imported scores. Reward models are tiny random-init sequence classifiers saved to tmp."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch

from core.errors import StudioError
from core.reward_models import (
    DEFAULT_TEMPLATE,
    check_head,
    load_reward_model,
    render,
    reward_from_logits,
    score_texts,
)
from core.steps.judge import JudgeRequest, judge
from core.steps.rewards import RewardScoringConfig, score_rewards
from core.store import RunRecord, Store
from tests.conftest import CHAT_TEMPLATE, TINY_D_MODEL, _copy_tokenizer, run_cli

N_PREF = 30  # demo problems -> 30 preference rows, 60..120 responses
CONTEXT = 512  # the tiny models' positions: every demo text fits


def _save_rm(
    folder: Path,
    arch: str,
    *,
    num_labels: int,
    chat: bool = False,
    pad: bool = True,
    problem_type: str | None = None,
) -> Path:
    """A random-init 2-layer sequence classifier (GPT-2 or Llama, 64 wide) with the MiniLM
    tokenizer, saved to ``folder``. ``pad=False``: neither the tokenizer nor the config has a
    pad token ([SEP] is the tokenizer's eos), as with many decoder reward models."""
    import transformers

    tok = _copy_tokenizer(folder)
    tok.bos_token, tok.eos_token = "[CLS]", "[SEP]"
    if chat:
        tok.chat_template = CHAT_TEMPLATE
    if not pad:
        tok.pad_token = None
    tok.save_pretrained(folder)
    if not pad:  # the copied special_tokens_map.json would bring [PAD] back on load
        spec = folder / "special_tokens_map.json"
        spec.write_text(
            json.dumps({k: v for k, v in json.loads(spec.read_text()).items() if k != "pad_token"})
        )
    common: dict[str, Any] = {
        "vocab_size": len(tok),
        "num_labels": num_labels,
        "bos_token_id": tok.cls_token_id,
        "eos_token_id": tok.sep_token_id,
        "pad_token_id": tok.pad_token_id if pad else None,
    }
    if problem_type is not None:
        common["problem_type"] = problem_type
    torch.manual_seed(0)
    if arch == "gpt2":
        config = transformers.GPT2Config(
            n_layer=2, n_embd=TINY_D_MODEL, n_head=2, n_positions=CONTEXT, **common
        )
        model = transformers.GPT2ForSequenceClassification(config)
    else:
        config = transformers.LlamaConfig(
            hidden_size=TINY_D_MODEL,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            intermediate_size=128,
            max_position_embeddings=CONTEXT,
            **common,
        )
        model = transformers.LlamaForSequenceClassification(config)
    with torch.no_grad():  # a head that tells texts apart (random init is near zero)
        head = model.score.weight
        head.normal_(0.0, 0.1)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def scalar_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """GPT-2 scalar reward model (num_labels 1), no chat template: the plain template."""
    return _save_rm(tmp_path_factory.mktemp("rm-scalar"), "gpt2", num_labels=1)


@pytest.fixture(scope="module")
def ordinal_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Llama CORAL reward model as WildReward trains it (num_labels 3, K 4, multi-label BCE),
    with a chat template."""
    return _save_rm(
        tmp_path_factory.mktemp("rm-ordinal"),
        "llama",
        num_labels=3,
        chat=True,
        problem_type="multi_label_classification",
    )


@pytest.fixture(scope="module")
def pref_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A database with the demo preference set 'prefs', a chat set 'chats' and prompts 'plain'
    (read-only for the tests: copy it before writing)."""
    from core.demo_data import write_demo_chats, write_demo_jsonl, write_demo_preferences

    folder = tmp_path_factory.mktemp("rewards")
    db = str(folder / "base.duckdb")
    prefs = write_demo_preferences(folder / "prefs.jsonl", n=N_PREF)
    chats = write_demo_chats(folder / "chats.jsonl", n=12)
    plain = write_demo_jsonl(folder / "plain.jsonl", n=8)
    for path, name, kind in (
        (prefs, "prefs", "preferences"),
        (chats, "chats", "chats"),
        (plain, "plain", "prompts"),
    ):
        assert run_cli("ingest", str(path), "--dataset", name, "--kind", kind, "--db", db) == 0
    return Path(db)


@pytest.fixture
def db(pref_db: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "studio.duckdb"
    dest.write_bytes(pref_db.read_bytes())
    return dest


def _responses(db: Path, dataset: str = "prefs") -> list[tuple[str, int, str, str, str]]:
    """(example_id, response_idx, role, prompt, response text) of every stored response."""
    with Store(db).connect() as con:
        rows = con.execute(
            "SELECT r.example_id, r.response_idx, r.role, e.prompt, r.text FROM responses r "
            "JOIN examples e ON e.dataset = r.dataset AND e.id = r.example_id "
            "WHERE r.dataset = ? ORDER BY e.idx, r.response_idx",
            [dataset],
        ).fetchall()
    return [tuple(r) for r in rows]


def _direct(rm: Any, text: str, *, chat: bool) -> torch.Tensor:
    """The model's own logits [num_labels] for one text: tokenized alone, no padding."""
    ids = rm.tokenizer(text, add_special_tokens=not chat, return_tensors="pt")["input_ids"]
    with torch.inference_mode():  # no token_type_ids: GPT-2 would add them as embeddings
        return rm.model(input_ids=ids).logits[0].float()


# --- the heads -------------------------------------------------------------------------------
def test_coral_reward_is_one_plus_the_sum_of_sigmoids_not_a_softmax() -> None:
    logits = np.array([[2.0, 0.0, -2.0], [-9.0, -9.0, -9.0], [9.0, 9.0, 9.0]])
    got = reward_from_logits(logits, "ordinal")
    sig = 1 / (1 + np.exp(-logits))
    np.testing.assert_allclose(got, 1 + sig.sum(axis=1))
    assert got[0] == pytest.approx(2.5)  # symmetric thresholds: the middle of 1..4
    assert 1.0 < got[1] < 1.001 and 3.999 < got[2] < 4.0  # within [1, K]
    soft = np.exp(logits[0]) / np.exp(logits[0]).sum()
    assert got[0] != pytest.approx(1 + (soft * np.arange(3)).sum())  # a softmax reads differently
    assert reward_from_logits(torch.tensor([[0.5], [-1.0]]), "scalar").tolist() == [0.5, -1.0]


@pytest.mark.parametrize(
    ("num_labels", "head", "match"),
    [
        (3, "scalar", "exactly 1; if it is an ordinal CORAL head \\(K = 4"),
        (2, "scalar", "has 2 output logits"),
        (1, "ordinal", "K - 1 >= 2.*use --head scalar"),
        (0, "ordinal", "has 0 output logit"),
        (3, "softmax", "head must be one of scalar, ordinal"),
    ],
)
def test_logits_that_fit_neither_head_are_refused(num_labels: int, head: str, match: str) -> None:
    with pytest.raises(StudioError, match=match):
        check_head(num_labels, head)
    if head in ("scalar", "ordinal") and num_labels:
        with pytest.raises(StudioError):
            reward_from_logits(np.zeros((2, num_labels)), head)


def test_two_logits_are_an_ordinal_head_with_three_levels() -> None:
    """K - 1 = 2 fits CORAL (K = 3); only a config that says softmax rules it out."""
    check_head(2, "ordinal")
    assert reward_from_logits(np.zeros((1, 2)), "ordinal").tolist() == [2.0]
    with pytest.raises(StudioError, match="softmax classifier"):
        check_head(2, "ordinal", problem_type="single_label_classification")


# --- loading ---------------------------------------------------------------------------------
def test_a_model_without_a_classification_head_is_refused(tiny_gpt2_dir: Path) -> None:
    with pytest.raises(StudioError, match="is a GPT2Model, not a reward model") as err:
        load_reward_model(str(tiny_gpt2_dir), head="scalar")
    assert "\n" not in str(err.value)


def test_a_head_missing_from_the_checkpoint_is_refused(tmp_path: Path, tiny_gpt2_dir: Path) -> None:
    """The config claims a classifier but the weights hold no head: loading would make one up."""
    folder = tmp_path / "claims-a-head"
    folder.mkdir()
    for f in tiny_gpt2_dir.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((folder / "config.json").read_text())
    cfg["architectures"] = ["GPT2ForSequenceClassification"]
    cfg["id2label"] = {"0": "LABEL_0"}
    cfg["label2id"] = {"LABEL_0": 0}
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(StudioError, match=r"no trained classification head.*score.weight"):
        load_reward_model(str(folder), head="scalar")


def test_num_labels_that_fit_neither_head_are_refused_on_load(
    tmp_path: Path, ordinal_dir: Path, scalar_dir: Path
) -> None:
    with pytest.raises(StudioError, match=r"has 3 output logits.*--head ordinal"):
        load_reward_model(str(ordinal_dir), head="scalar")
    with pytest.raises(StudioError, match="1 output logit"):
        load_reward_model(str(scalar_dir), head="ordinal")
    softmax = _save_rm(
        tmp_path / "softmax", "gpt2", num_labels=2, problem_type="single_label_classification"
    )
    with pytest.raises(StudioError, match="softmax classifier"):
        load_reward_model(str(softmax), head="ordinal")
    with pytest.raises(StudioError, match="does not exist"):
        load_reward_model(str(tmp_path / "nowhere" / "x"), head="scalar")


def test_a_decoder_without_a_pad_token_pads_with_eos(tmp_path: Path) -> None:
    folder = _save_rm(tmp_path / "nopad", "llama", num_labels=1, pad=False)
    rm = load_reward_model(str(folder), head="scalar")
    assert rm.tokenizer.pad_token == "[SEP]" == rm.tokenizer.eos_token
    assert rm.model.config.pad_token_id == rm.pad_token_id == rm.tokenizer.eos_token_id
    texts = ["short", "a much longer text that needs padding in the batch", "mid length one"]
    values, _, _ = score_texts(rm, texts, chat=False, max_length=64, batch_size=3)
    direct = [float(_direct(rm, t, chat=False)[0]) for t in texts]
    np.testing.assert_allclose(values, direct, rtol=1e-4, atol=1e-5)


# --- scoring ---------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["scalar", "ordinal"])
def test_batched_rewards_equal_the_models_own_logits(
    which: str, scalar_dir: Path, ordinal_dir: Path, db: Path
) -> None:
    """Length-bucketed, padded batches give each text the reward its own forward gives: for
    CORAL, 1 + sum of sigmoids of the model's logits, computed here directly."""
    folder = scalar_dir if which == "scalar" else ordinal_dir
    rm = load_reward_model(str(folder), head=which)  # type: ignore[arg-type]
    chat = which == "ordinal"
    template = "chat" if chat else DEFAULT_TEMPLATE
    rows = _responses(db)[:9]
    texts = [
        render(rm.tokenizer, [{"role": "user", "content": p}], r, template=template)
        for _, _, _, p, r in rows
    ]
    if chat:
        assert texts[0].startswith("[CLS]<|user|>\n") and "<|assistant|>\n" in texts[0]
    else:
        assert texts[0] == f"{rows[0][3]}\n\n{rows[0][4]}"
    values, logits, truncated = score_texts(rm, texts, chat=chat, max_length=128, batch_size=4)
    direct = torch.stack([_direct(rm, t, chat=chat) for t in texts])
    np.testing.assert_allclose(logits, direct.numpy(), rtol=1e-4, atol=1e-5)
    if which == "ordinal":
        expected = 1 + torch.sigmoid(direct.double()).sum(dim=1)
        assert ((values >= 1) & (values <= 4)).all()
    else:
        expected = direct[:, 0].double()
    np.testing.assert_allclose(values, expected.numpy(), rtol=1e-4, atol=1e-5)
    assert len(set(np.round(values, 6))) > 1  # the texts are told apart
    assert not truncated.any()


def test_cli_scores_every_response_with_its_role(
    db: Path, ordinal_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["reward", "--dataset", "prefs", "--model", str(ordinal_dir), "--head", "ordinal"]
    assert run_cli(*argv, "--name", "wild", "--batch-size", "8", "--db", str(db)) == 0
    out = capsys.readouterr().out
    assert "ordinal, K = 4" in out and "chat template" in out and "0 truncated" in out
    store = Store(db)
    runs = store.reward_runs("prefs")
    assert list(runs) == ["wild"]
    run = store.run(runs["wild"])
    assert run["step"] == "reward" and run["status"] == "done"
    cfg = run["config"]
    assert (cfg["name"], cfg["head"], cfg["K"], cfg["template"]) == ("wild", "ordinal", 4, "chat")
    assert cfg["model"] == str(ordinal_dir.resolve()) and cfg["max_length"] == CONTEXT
    assert run["versions"]["torch"] == torch.__version__
    scores = store.reward_scores(runs["wild"]).to_pylist()
    expected = _responses(db)
    assert [(s["example_id"], s["response_idx"], s["role"]) for s in scores] == [
        r[:3] for r in expected
    ]
    assert {s["role"] for s in scores} == {"chosen", "rejected"}
    assert all(len(s["logits"]) == 3 and 1 <= s["value"] <= 4 for s in scores)
    for s in scores[:5]:  # the stored value is the CORAL reward of the stored logits
        assert s["value"] == pytest.approx(1 + sum(1 / (1 + np.exp(-x)) for x in s["logits"]))
    assert not any(s["truncated"] for s in scores)
    assert {s["source"] for s in scores} == {f"model: {ordinal_dir.resolve()}"}
    assert run["summary"]["n_scores"] == len(expected)
    assert run["summary"]["n_examples"] == N_PREF


def test_chats_score_their_last_assistant_turn(db: Path, scalar_dir: Path) -> None:
    rid = score_rewards(
        Store(db), RewardScoringConfig(dataset="chats", model=str(scalar_dir), head="scalar")
    )
    scores = Store(db).reward_scores(rid).to_pylist()
    assert len(scores) == 12 and {(s["response_idx"], s["role"]) for s in scores} == {
        (-1, "response")
    }
    assert all(s["logits"] is None for s in scores)
    rm = load_reward_model(str(scalar_dir), head="scalar")
    with Store(db).connect() as con:
        extra = con.execute(
            "SELECT extra FROM examples WHERE dataset = 'chats' AND id = ?",
            [scores[1]["example_id"]],
        ).fetchone()
    assert extra is not None
    turns = json.loads(extra[0])["messages"]
    text = render(rm.tokenizer, turns[:-1], turns[-1]["content"], template=DEFAULT_TEMPLATE)
    if len(turns) > 2:
        assert text.startswith("user: ") and "\nassistant: " in text
    assert scores[1]["value"] == pytest.approx(float(_direct(rm, text, chat=False)[0]), abs=1e-5)


class _Stop(Exception):
    pass


def test_an_interrupted_run_resumes_to_the_same_scores(db: Path, scalar_dir: Path) -> None:
    store = Store(db)
    opts: dict[str, Any] = {
        "dataset": "prefs",
        "model": str(scalar_dir),
        "head": "scalar",
        "batch_size": 4,
        "chunk_size": 16,
    }
    seen = [0]

    def stop_in_the_second_chunk(n: int) -> None:
        seen[0] += n
        if seen[0] > 20:
            raise _Stop

    with pytest.raises(_Stop):
        score_rewards(store, RewardScoringConfig(**opts), progress=stop_in_the_second_chunk)
    (rid,) = store.list_runs(dataset="prefs", step="reward")["run_id"].tolist()
    assert store.run(rid)["status"] == "running"
    assert len(store.done_reward_keys(rid)) == 16  # the first chunk, whole; nothing of the 2nd
    assert store.reward_runs("prefs") == {}  # an unfinished run is not a reward yet

    resumed = score_rewards(store, RewardScoringConfig(**opts))
    assert resumed == rid
    summary = store.run(rid)["summary"]
    assert summary["resumed"] and summary["scored_this_session"] == len(_responses(db)) - 16
    clean = score_rewards(store, RewardScoringConfig(**opts, resume=False))
    assert clean != rid
    a, b = store.reward_scores(rid).to_pylist(), store.reward_scores(clean).to_pylist()
    assert [(s["example_id"], s["response_idx"]) for s in a] == [
        (s["example_id"], s["response_idx"]) for s in b
    ]
    assert len({(s["example_id"], s["response_idx"]) for s in a}) == len(a)  # no duplicates
    np.testing.assert_allclose([s["value"] for s in a], [s["value"] for s in b], atol=1e-5)
    assert store.reward_runs("prefs") == {scalar_dir.name: clean}  # the newest of the name


def test_over_long_texts_are_truncated_counted_and_flagged(
    db: Path, scalar_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["reward", "--dataset", "prefs", "--model", str(scalar_dir), "--head", "scalar"]
    assert run_cli(*argv, "--max-length", "12", "--db", str(db)) == 0
    captured = capsys.readouterr()
    run = Store(db).run(Store(db).reward_runs("prefs")[scalar_dir.name])
    scores = Store(db).reward_scores(run["run_id"]).to_pylist()
    n_long = sum(s["truncated"] for s in scores)
    rm = load_reward_model(str(scalar_dir), head="scalar")
    lengths = [len(rm.tokenizer(f"{p}\n\n{r}")["input_ids"]) for _, _, _, p, r in _responses(db)]
    assert n_long == sum(n > 12 for n in lengths) > 0
    assert run["summary"]["n_truncated"] == n_long and run["config"]["max_length"] == 12
    assert f"{n_long} truncated (longer than 12 tokens)" in captured.out
    assert f"{n_long} of {len(scores)} texts were longer than 12 tokens" in captured.err
    # the model's context caps a longer --max-length
    assert run_cli(*argv, "--max-length", "100000", "--name", "cap", "--db", str(db)) == 0
    capped = Store(db).run(Store(db).reward_runs("prefs")["cap"])
    assert capped["config"]["max_length"] == CONTEXT


def test_templates(db: Path, scalar_dir: Path, ordinal_dir: Path) -> None:
    store = Store(db)
    rid = score_rewards(
        store,
        RewardScoringConfig(
            dataset="prefs",
            model=str(ordinal_dir),
            head="ordinal",
            template="Q: {prompt} A: {response}",
            name="plain",
        ),
    )
    assert store.run(rid)["config"]["template"] == "Q: {prompt} A: {response}"
    with pytest.raises(StudioError, match="no chat template"):
        score_rewards(
            store,
            RewardScoringConfig(
                dataset="prefs", model=str(scalar_dir), head="scalar", template="chat"
            ),
        )
    with pytest.raises(StudioError, match="unknown field \\{answer\\}"):
        score_rewards(
            store,
            RewardScoringConfig(
                dataset="prefs", model=str(scalar_dir), head="scalar", template="{answer}"
            ),
        )
    with pytest.raises(StudioError, match="must contain \\{response\\}"):
        score_rewards(
            store,
            RewardScoringConfig(
                dataset="prefs", model=str(scalar_dir), head="scalar", template="{prompt}"
            ),
        )
    # a chat template given on the command line replaces the tokenizer's (here: none)
    rid = score_rewards(
        store,
        RewardScoringConfig(
            dataset="prefs",
            model=str(scalar_dir),
            head="scalar",
            chat_template=CHAT_TEMPLATE,
            name="custom-chat",
        ),
    )
    cfg = store.run(rid)["config"]
    assert cfg["template"] == "chat" and cfg["chat_template"] == CHAT_TEMPLATE


def test_bad_input_is_one_line_and_stores_nothing(
    db: Path, scalar_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["reward", "--model", str(scalar_dir), "--head", "scalar", "--db", str(db)]
    for dataset, match in (
        ("plain", "holds prompts only: a reward model scores responses"),
        ("nope", "no dataset 'nope'"),
    ):
        assert run_cli(*base, "--dataset", dataset) == 2
        err = capsys.readouterr().err
        assert match in err and err.count("\n") == 1
    assert run_cli(*base, "--dataset", "prefs", "--batch-size", "0") == 2
    assert "batch size must be at least 1" in capsys.readouterr().err
    assert Store(db).list_runs(step="reward").empty


# --- imported scores ---------------------------------------------------------------------------
def test_import_rewards_round_trip(db: Path, tmp_path: Path) -> None:
    rows = _responses(db)
    path = tmp_path / "scores.jsonl"
    want = {(eid, idx): 0.25 * i - 3 for i, (eid, idx, *_) in enumerate(rows)}
    path.write_text(
        "".join(
            json.dumps({"example_id": e, "response_idx": i, "rm": v}) + "\n"
            for (e, i), v in reversed(list(want.items()))
        )
    )
    argv = ["import-rewards", str(path), "--dataset", "prefs", "--name", "server-rm"]
    assert run_cli(*argv, "--column", "rm", "--db", str(db)) == 0
    store = Store(db)
    rid = store.reward_runs("prefs")["server-rm"]
    got = store.reward_scores(rid).to_pylist()
    assert {(s["example_id"], s["response_idx"]): s["value"] for s in got} == want
    assert [(s["example_id"], s["response_idx"]) for s in got] == list(want)  # ingest order
    assert {s["source"] for s in got} == {f"imported: {path}"}
    assert all(s["truncated"] is None and s["logits"] is None for s in got)
    assert store.run(rid)["config"]["column"] == "rm"

    # CSV into a chat set: no response_idx, the chat's single response (-1)
    csv = tmp_path / "chat.csv"
    ids = store.reward_candidates("chats").column("example_id").to_pylist()
    csv.write_text("id,score\n" + "".join(f"{e},{k / 2}\n" for k, e in enumerate(ids)))
    assert (
        run_cli("import-rewards", str(csv), "--dataset", "chats", "--name", "c", "--db", str(db))
        == 0
    )
    chat = store.reward_scores(store.reward_runs("chats")["c"]).to_pylist()
    assert [(s["example_id"], s["response_idx"], s["value"]) for s in chat] == [
        (e, -1, k / 2) for k, e in enumerate(ids)
    ]


@pytest.mark.parametrize(
    ("lines", "match"),
    [
        (['{"example_id": "pref-00001", "response_idx": 0}'], "line 1: field 'score' is missing"),
        (
            [
                '{"example_id": "pref-00001", "response_idx": 0, "score": 1}',
                "",
                '{"response_idx": 1, "score": 2}',
            ],
            "line 3: field 'example_id' is missing",
        ),
        (
            [
                '{"example_id": "pref-00001", "response_idx": 0, "score": 1}',
                '{"example_id": "pref-00001", "response_idx": 1, "score": "high"}',
            ],
            "line 2: field 'score': expected a finite number, got 'high'",
        ),
        (
            [
                '{"example_id": "pref-00001", "response_idx": 0, "score": 1}',
                '{"example_id": "pref-00001", "response_idx": 0, "score": 2}',
            ],
            "line 2: field 'example_id': \\('pref-00001', response_idx 0\\) is scored twice \\(first at line 1\\)",
        ),
        (
            ['{"example_id": "pref-00001", "response_idx": -2, "score": 1}'],
            "line 1: field 'response_idx': expected an integer >= -1, got -2",
        ),
        (
            [
                '{"example_id": "pref-00001", "response_idx": 0, "score": 1}',
                '{"example_id": "nobody", "response_idx": 0, "score": 1}',
            ],
            "line 2: dataset 'prefs' has no response 0 of example 'nobody' \\(1 unknown",
        ),
        (
            [
                '{"example_id": "pref-00001", "response_idx": 0, "score": 1}',
                '{"example_id": "pref-00001", "response_idx": 9, "score": 1}',
            ],
            "line 2: dataset 'prefs' has no response 9 of example 'pref-00001'",
        ),
        (
            ['{"example_id": "pref-00001", "score": 1}'],
            "line 1: field 'response_idx' is missing or -1: dataset 'prefs' holds preference",
        ),
        (['{"example_id": "pref-00001", "response_idx": 0, "score": 1'], "line 1: malformed JSON"),
    ],
)
def test_bad_reward_files_name_the_line_and_store_nothing(
    db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], lines: list[str], match: str
) -> None:
    import re

    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    argv = ["import-rewards", str(path), "--dataset", "prefs", "--name", "x", "--db", str(db)]
    assert run_cli(*argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: bad.jsonl ") and re.search(match, err), err
    assert "\n" not in err
    assert Store(db).list_runs(step="reward").empty


def test_bad_csv_and_unknown_file_type(db: Path, tmp_path: Path) -> None:
    from core.steps.rewards import import_rewards

    csv = tmp_path / "s.csv"
    csv.write_text("example_id,response_idx,score\npref-00001,0,1.5\npref-00001,1,nan\n")
    with pytest.raises(StudioError, match=r"s.csv line 3: field 'score': expected a finite number"):
        import_rewards(Store(db), csv, dataset="prefs", name="x")
    (tmp_path / "s.txt").write_text("example_id score\n")
    with pytest.raises(StudioError, match=r"unknown file type '.txt'"):
        import_rewards(Store(db), tmp_path / "s.txt", dataset="prefs", name="x")
    parquet = tmp_path / "s.parquet"
    import pyarrow.parquet as pq

    pq.write_table(
        pa.table({"example_id": ["pref-00001"], "response_idx": [0], "score": [None]}), parquet
    )
    with pytest.raises(StudioError, match=r"s.parquet row 1: field 'score' is missing"):
        import_rewards(Store(db), parquet, dataset="prefs", name="x")


# --- judging: per category, by margin, calibration ------------------------------------------------
JUDGE_LINE = re.compile(
    r"^  (\S+) (\S+)=(\S+): pairwise accuracy (\S+) \[\S+, \S+\] \((\d+) pairs\); "
    r"1-of-N accuracy (\S+) \[\S+, \S+\] \(chance (\S+), (\d+) prompts\)$"
)


def _example_columns(db: Path) -> dict[str, dict[str, Any]]:
    """example_id -> {difficulty (label), task (tag), idx} of the preference set."""
    with Store(db).connect() as con:
        rows = con.execute(
            "SELECT e.id, e.idx, json_extract_string(e.tags, '$.task'), l.value FROM examples e "
            "JOIN labels l ON l.dataset = e.dataset AND l.example_id = e.id "
            "AND l.name = 'difficulty' WHERE e.dataset = 'prefs'"
        ).fetchall()
    return {r[0]: {"idx": r[1], "task": r[2], "difficulty": r[3]} for r in rows}


def _expected_by(
    scores: dict[tuple[str, int], float], groups: dict[str, Any]
) -> dict[Any, tuple[float, int, float, float, int]]:
    """value -> (pairwise, pairs, 1-of-N, chance, prompts), counted by hand: ties half a pair,
    a tie at the top a 1-of-N miss."""
    per: dict[Any, list[tuple[float, list[float]]]] = {}
    for eid, value in groups.items():
        rejected = [s for (e, i), s in scores.items() if e == eid and i > 0]
        per.setdefault(value, []).append((scores[(eid, 0)], rejected))
    out = {}
    for value, examples in per.items():
        outcomes = [1.0 if c > r else 0.5 if c == r else 0.0 for c, rs in examples for r in rs]
        wins = [c > max(rs) for c, rs in examples]
        chance = sum(1 / (len(rs) + 1) for _, rs in examples) / len(examples)
        out[value] = (
            sum(outcomes) / len(outcomes),
            len(outcomes),
            sum(wins) / len(wins),
            chance,
            len(examples),
        )
    return out


def _import_scores(db: Path, tmp_path: Path, scores: dict[tuple[str, int], float], name: str):
    path = tmp_path / f"{name}.jsonl"
    path.write_text(
        "".join(
            json.dumps({"example_id": e, "response_idx": i, "score": s}) + "\n"
            for (e, i), s in scores.items()
        )
    )
    argv = ["import-rewards", str(path), "--dataset", "prefs", "--name", name, "--db", str(db)]
    assert run_cli(*argv) == 0


def test_judge_by_label_tag_and_cluster_with_margins(
    db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`judge --by`: per value of a label, a tag and the latest cluster run, each source's
    accuracies equal a count by hand (with ties); `--margins` likewise; `--json` the same."""
    ex = _example_columns(db)
    # chosen 1.5; rejected k: 0.75 k (difficulty - 1): right at difficulty 1, ties at 2 and 3
    scores = {
        (e, i): 1.5 if i == 0 else 0.75 * i * (ex[e]["difficulty"] - 1)
        for e, i, *_ in _responses(db)
    }
    _import_scores(db, tmp_path, scores, "imp")
    store = Store(db)
    store.add_run(
        RunRecord("cluster", "prefs", {}, {}, {}, parent_run=999),
        assignments=pa.table(
            {"example_id": list(ex), "cluster": [ex[e]["idx"] % 3 for e in ex]},
            schema=pa.schema([("example_id", pa.string()), ("cluster", pa.int32())]),
        ),
        clusters=pd.DataFrame(
            {"cluster": [0, 1, 2], "size": [10, 10, 10], "label": "", "top_features": "[]"}
        ),
    )
    capsys.readouterr()
    argv = ["judge", "--dataset", "prefs", "--db", str(db), "--by", "difficulty"]
    assert run_cli(*argv, "--by", "task,cluster", "--margins", "0,1") == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    overall = _expected_by(scores, dict.fromkeys(ex, "all"))["all"]
    assert lines[0].startswith(  # the overall line, as before
        f"imp: {len(scores)} scores; pairwise accuracy {overall[0]:.3f} ["
    )
    assert f"; 1-of-N accuracy {overall[2]:.3f} [" in lines[0]
    printed = {}
    for line in lines:
        m = JUDGE_LINE.match(line)
        if m:
            printed[(m[2], m[3])] = (float(m[4]), int(m[5]), float(m[6]), float(m[7]), int(m[8]))
    for col, groups in (
        ("difficulty", {e: int(v["difficulty"]) for e, v in ex.items()}),
        ("task", {e: v["task"] for e, v in ex.items()}),
        ("cluster", {e: v["idx"] % 3 for e, v in ex.items()}),
    ):
        want = _expected_by(scores, groups)
        assert f"by {col} (side example):" in lines
        assert {k[1] for k in printed if k[0] == col} == {str(v) for v in want}
        for value, (pw, n_pairs, one, chance, n_prompts) in want.items():
            got = printed[(col, str(value))]
            assert got[0] == pytest.approx(pw, abs=5e-4) and got[1] == n_pairs, (col, value)
            assert got[2] == pytest.approx(one, abs=5e-4) and got[4] == n_prompts, (col, value)
            assert got[3] == pytest.approx(chance, abs=5e-4)
    by_d = _expected_by(scores, {e: int(v["difficulty"]) for e, v in ex.items()})
    assert by_d[1][0] == 1.0 and 0 < by_d[2][0] < 1 and by_d[4][0] == 0.0  # the case is varied
    margins = [1.5 - s for (e, i), s in scores.items() if i > 0]
    for m in (0, 1):
        kept = [x for x in margins if abs(x) > m]
        acc = sum(x > 0 for x in kept) / len(kept)
        want_line = (
            f"  imp m={m}: accuracy {acc:.3f} ({len(kept)} pairs, "
            f"kept {len(kept) / len(margins):.3f})"
        )
        assert want_line in lines

    # the same numbers as JSON, unrounded
    assert run_cli(*argv, "--margins", "0,1", "--json") == 0
    judged = json.loads(capsys.readouterr().out)
    rows = judged["sources"]["imp"]["by"]["difficulty"]
    assert [r["value"] for r in rows] == [1.0, 2.0, 3.0, 4.0]
    for r in rows:
        pw, n_pairs, one, chance, _ = by_d[int(r["value"])]
        assert (r["pairwise"], r["n_pairs"], r["one_of_n"]) == (
            pytest.approx(pw),
            n_pairs,
            pytest.approx(one),
        )
        assert r["one_of_n_chance"] == pytest.approx(chance)
    curve = judged["sources"]["imp"]["margins"]
    assert [c["n_pairs"] for c in curve] == [sum(abs(x) > m for x in margins) for m in (0, 1)]
    assert judged["by_side"] == "example"

    # by the rejected response's value: no 1-of-N per rejected response
    assert run_cli(*argv, "--side", "rejected") == 0
    out = capsys.readouterr().out
    assert "by difficulty (side rejected):" in out
    assert "1-of-N accuracy n/a (not defined per rejected response)" in out

    # the Rewards page's per-category call: the same tables, without the headline bootstraps
    full = judge(store, JudgeRequest("prefs", by=["difficulty"], margins=[0, 1]))
    alone = judge(store, JudgeRequest("prefs", by=["difficulty"], margins=[0, 1], headline=False))
    assert "pairwise" in full["sources"]["imp"] and "one_of_n" in full["sources"]["imp"]
    assert "pairwise" not in alone["sources"]["imp"] and "one_of_n" not in alone["sources"]["imp"]
    for part in ("by", "margins"):
        assert alone["sources"]["imp"][part] == full["sources"]["imp"][part]


def test_judge_with_no_reward_sources_is_an_error_not_silence(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for extra in ([], ["--json"]):
        assert run_cli("judge", "--dataset", "prefs", "--db", str(db), *extra) == 2
        err = capsys.readouterr().err.strip()
        assert "dataset 'prefs' has no reward scores to judge" in err and "\n" not in err


def test_judge_by_names_what_exists_when_nothing_matches(
    db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _import_scores(db, tmp_path, {(e, i): float(i == 0) for e, i, *_ in _responses(db)}, "one")
    capsys.readouterr()
    base = ["judge", "--dataset", "prefs", "--db", str(db)]
    for extra, want in (
        (
            ["--by", "colour"],
            "--by colour: dataset 'prefs' has no label, tag or cluster of that name; labels: "
            "difficulty, n_rejected; tags: ",
        ),
        (["--by", "colour"], "; response_cluster: none (no clustered responses)"),
        (["--by", "cluster"], "--by cluster: dataset 'prefs' has no cluster run yet"),
        (["--margins", "0,big"], "--margins '0,big': expected numbers"),
        (["--margins", "-1"], "margins must be finite numbers >= 0"),
        (["--calibration", "stars"], "dataset 'prefs' has no label 'stars'; labels: difficulty"),
    ):
        assert run_cli(*base, *extra) == 2, extra
        err = capsys.readouterr().err.strip()
        assert want in err and "\n" not in err, err
    chats = ["judge", "--dataset", "chats", "--db", str(db), "--by", "task"]
    assert run_cli(*chats) == 2
    assert "need a preference set" in capsys.readouterr().err


def _write_rated_chats(path: Path, feedback: list[int | None]) -> Path:
    """Demo chats with a WildReward-style ``feedback`` rating each (None: unrated)."""
    from core.demo_data import write_demo_chats

    src = write_demo_chats(path.with_suffix(".src.jsonl"), n=len(feedback))
    rows = [json.loads(x) for x in src.read_text().splitlines()]
    path.write_text(
        "".join(
            json.dumps({**r, "feedback": f}) + "\n" for r, f in zip(rows, feedback, strict=True)
        )
    )
    return path


def _ece_by_hand(logits: np.ndarray, labels: np.ndarray, n_bins: int) -> float:
    """Top-label ECE from CORAL logits, written out: cumulative sigmoids made non-increasing,
    class probabilities as their differences, bins (lo, hi] of the top probability."""
    above = 1 / (1 + np.exp(-logits))
    for k in range(1, above.shape[1]):
        above[:, k] = np.minimum(above[:, k], above[:, k - 1])
    cum = np.hstack([np.ones((len(above), 1)), above, np.zeros((len(above), 1))])
    probs = cum[:, :-1] - cum[:, 1:]
    conf, pred = probs.max(axis=1), probs.argmax(axis=1) + 1
    bins = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        inside = bins == b
        if inside.any():
            total += inside.sum() * abs(
                (pred[inside] == labels[inside]).mean() - conf[inside].mean()
            )
    return total / len(labels)


def test_calibration_of_an_ordinal_rm_against_feedback(
    db: Path, tmp_path: Path, ordinal_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from core.steps.judge import calibration

    feedback = [None, 1, 2, 3, 4, 4, 3, 2, 1, 2, 3, 4]
    rated = _write_rated_chats(tmp_path / "rated.jsonl", feedback)
    assert (
        run_cli("ingest", str(rated), "--dataset", "rated", "--kind", "chats", "--db", str(db)) == 0
    )
    store = Store(db)
    rid = score_rewards(
        store,
        RewardScoringConfig(dataset="rated", model=str(ordinal_dir), head="ordinal", name="wild"),
    )
    stored = store.reward_scores(rid).to_pandas()
    assert (stored["response_idx"] == -1).all()
    ids = store.labels("rated", "feedback").to_pandas().dropna()
    got = calibration(store, dataset="rated", name="wild", label="feedback", n_bins=5)
    logits = np.stack(stored.set_index("example_id").loc[ids["example_id"], "logits"].to_list())
    labels = ids["value"].to_numpy()
    assert (got["n"], got["k"], got["n_unlabelled"]) == (11, 4, 1)
    assert got["ece"] == pytest.approx(_ece_by_hand(logits.astype(float), labels, 5), abs=1e-6)
    assert got["label_counts"] == {1: 2, 2: 3, 3: 3, 4: 3}
    assert sum(b["count"] for b in got["table"]) == 11 and len(got["table"]) == 5
    assert got["mean_reward"] == pytest.approx(
        stored["value"][stored["example_id"].isin(ids["example_id"])].mean()
    )

    # the CLI: the ordinal source is calibrated, an imported one is skipped with the reason
    flat = tmp_path / "flat.jsonl"
    flat.write_text(
        "".join(json.dumps({"id": e, "score": 1.0}) + "\n" for e in stored["example_id"])
    )
    assert (
        run_cli(
            "import-rewards", str(flat), "--dataset", "rated", "--name", "flat", "--db", str(db)
        )
        == 0
    )
    capsys.readouterr()
    argv = ["judge", "--dataset", "rated", "--db", str(db), "--calibration", "feedback"]
    assert run_cli(*argv, "--bins", "5") == 0
    out = capsys.readouterr().out.splitlines()
    assert f"wild calibration against 'feedback': ECE {got['ece']:.3f} (n 11, K 4," in "\n".join(
        out
    )
    assert any(line.endswith("labels 1: 2, 2: 3, 3: 3, 4: 3") for line in out)
    assert sum(line.startswith("  confidence (") for line in out) == sum(
        b["count"] > 0 for b in got["table"]
    )
    assert any(line.startswith("flat calibration: skipped: no logits") for line in out)
    # chats pair no responses: the agreement line says n/a rather than failing
    assert "flat vs wild: Spearman n/a, pair agreement n/a (0 pairs)" in "\n".join(out)
    with pytest.raises(StudioError, match="reward 'flat' has no logits"):
        calibration(store, dataset="rated", name="flat", label="feedback")

    # a rating outside 1..K names the example and the value
    five = _write_rated_chats(tmp_path / "five.jsonl", [1, 5, 2])
    assert (
        run_cli("ingest", str(five), "--dataset", "five", "--kind", "chats", "--db", str(db)) == 0
    )
    score_rewards(
        store,
        RewardScoringConfig(dataset="five", model=str(ordinal_dir), head="ordinal", name="wild"),
    )
    second = store.labels("five", "feedback").column("example_id").to_pylist()[1]
    with pytest.raises(StudioError, match=rf"example '{second}' has label 5, outside 1..4"):
        calibration(store, dataset="five", name="wild", label="feedback")


def test_calibration_of_a_preference_set_matches_the_chosen_response(
    db: Path, ordinal_dir: Path
) -> None:
    from core.steps.judge import calibration

    store = Store(db)
    rid = score_rewards(
        store,
        RewardScoringConfig(dataset="prefs", model=str(ordinal_dir), head="ordinal", name="w"),
    )
    got = calibration(store, dataset="prefs", name="w", label="difficulty")
    n_rejected = sum(r[1] > 0 for r in _responses(db))
    assert (got["n"], got["n_unlabelled"], got["n_other_responses"]) == (N_PREF, 0, n_rejected)
    chosen = store.reward_scores(rid).to_pandas().query("response_idx == 0")
    labels = store.labels("prefs", "difficulty").to_pandas().set_index("example_id")["value"]
    logits = np.stack(chosen["logits"].to_list()).astype(float)
    want = _ece_by_hand(logits, labels.reindex(chosen["example_id"]).to_numpy(), 10)
    assert got["ece"] == pytest.approx(want, abs=1e-6)
