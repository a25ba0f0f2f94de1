"""core.reward_models: the two heads, loading checks, batched scoring, the resumable reward run,
and imported scores. Reward models are tiny random-init sequence classifiers saved to tmp."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
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
    score_rewards,
    score_texts,
)
from core.store import Store
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
    rid = score_rewards(Store(db), dataset="chats", model=str(scalar_dir), head="scalar")
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
        score_rewards(store, **opts, progress=stop_in_the_second_chunk)
    (rid,) = store.list_runs(dataset="prefs", step="reward")["run_id"].tolist()
    assert store.run(rid)["status"] == "running"
    assert len(store.done_reward_keys(rid)) == 16  # the first chunk, whole; nothing of the 2nd
    assert store.reward_runs("prefs") == {}  # an unfinished run is not a reward yet

    resumed = score_rewards(store, **opts)
    assert resumed == rid
    summary = store.run(rid)["summary"]
    assert summary["resumed"] and summary["scored_this_session"] == len(_responses(db)) - 16
    clean = score_rewards(store, **opts, resume=False)
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
        dataset="prefs",
        model=str(ordinal_dir),
        head="ordinal",
        template="Q: {prompt} A: {response}",
        name="plain",
    )
    assert store.run(rid)["config"]["template"] == "Q: {prompt} A: {response}"
    with pytest.raises(StudioError, match="no chat template"):
        score_rewards(store, dataset="prefs", model=str(scalar_dir), head="scalar", template="chat")
    with pytest.raises(StudioError, match="unknown field \\{answer\\}"):
        score_rewards(
            store, dataset="prefs", model=str(scalar_dir), head="scalar", template="{answer}"
        )
    with pytest.raises(StudioError, match="must contain \\{response\\}"):
        score_rewards(
            store, dataset="prefs", model=str(scalar_dir), head="scalar", template="{prompt}"
        )
    # a chat template given on the command line replaces the tokenizer's (here: none)
    rid = score_rewards(
        store,
        dataset="prefs",
        model=str(scalar_dir),
        head="scalar",
        chat_template=CHAT_TEMPLATE,
        name="custom-chat",
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
    from core.reward_models import import_rewards

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
