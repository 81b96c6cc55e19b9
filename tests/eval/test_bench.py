"""`belle eval bench`: lm-eval benchmarks in process, on belle's offline task belle_zh_mc and the tests'
own (tests/eval/lm_eval_tasks: a generative task, a tag, a group without an aggregate score)."""

import json

import numpy as np
import pytest

from belle.eval.bench import load_lm, task_metrics
from belle.generation import LoadOptions
from tests.eval.conftest import TEST_TASKS, hflm, lm_eval_results, loglikelihoods


def read(run):
    return json.loads((run / "bench.json").read_text(encoding="utf-8"))


def one_line(done, message):
    """Exit 2 with one error line holding `message` (beside, at most, the progress bars of a model load)."""
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    return done.returncode == 2 and len(errors) == 1 and message in errors[0] and "Traceback" not in done.stderr


@pytest.mark.parametrize("args, message", [
    (["--tasks", ","], "--tasks names no task"),
    (["--tasks", "belle_zh_mc", "--limit", "0"], "--limit must be at least 1"),
    (["--tasks", "belle_zh_mc", "--model", "nope"], "nope: no such model folder or .gguf file"),
])
def test_usage_errors_before_lm_eval_are_one_line(belle_main, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    done = belle_main("eval", "bench", "--model", tmp_path, "--output", tmp_path / "run", *args)
    assert one_line(done, message), done.stderr
    assert not (tmp_path / "run").exists()


def test_output_that_is_a_file_is_refused_before_lm_eval(belle_main, tmp_path):
    (tmp_path / "notes").write_text("mine", encoding="utf-8")
    for output in (tmp_path / "notes", tmp_path / "notes" / "run"):
        done = belle_main("eval", "bench", "--model", tmp_path, "--tasks", "belle_zh_mc", "--output", output)
        assert one_line(done, f"--output {output}: {tmp_path / 'notes'} is a file, not a folder"), done.stderr
    assert (tmp_path / "notes").read_text(encoding="utf-8") == "mine"


def test_run_folder_of_another_models_answers_is_refused(belle_main, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"model": "other", "judge": "gpt-4o"}), encoding="utf-8")
    (tmp_path / "sft").mkdir()
    done = belle_main("eval", "bench", "--model", tmp_path / "sft", "--tasks", "belle_zh_mc", "--output", run)
    assert one_line(done, "the run's answers are 'other''s, this model is 'sft'"), done.stderr
    assert sorted(p.name for p in run.iterdir()) == ["run.json"]


@pytest.fixture
def scripted_tasks(monkeypatch, tmp_path):
    """Two tasks beside belle's: one whose dataset folder holds a loading script, one whose Hub dataset
    is not in the cache; `belle eval bench` indexes them alone."""
    from lm_eval.tasks import TaskManager

    import belle.eval.bench

    tasks, scripted = tmp_path / "tasks", tmp_path / "scripted"
    tasks.mkdir()
    scripted.mkdir()
    (scripted / "scripted.py").write_text("import datasets\n", encoding="utf-8")
    common = 'test_split: test\noutput_type: multiple_choice\ndoc_to_text: "{{q}}"\ndoc_to_choice: ["A", "B"]\ndoc_to_target: 0\n'
    (tasks / "scripted.yaml").write_text(f"task: belle_test_scripted\ndataset_path: {scripted}\n{common}", encoding="utf-8")
    (tasks / "missing.yaml").write_text(f"task: belle_test_missing\ndataset_path: belle-tests/nowhere\n{common}",
                                        encoding="utf-8")
    manager = TaskManager(include_path=[str(belle.eval.bench.LOCAL_TASKS), str(tasks)], include_defaults=False)
    monkeypatch.setattr(belle.eval.bench, "task_manager", lambda include_path=(): manager)
    return scripted


@pytest.mark.slow  # imports lm-eval and datasets
@pytest.mark.parametrize("task, message", [
    ("belle_test_scripted", "belle_test_scripted: its dataset {scripted} needs a loading script, which datasets 4 and "
                            "later no longer run; give a converted copy"),
    ("belle_test_missing", "belle_test_missing: cannot load its dataset"),
])
def test_datasets_are_checked_before_the_model_loads(belle_main, scripted_tasks, offline, tmp_path, task, message):
    # tmp_path is no model: the dataset's error coming first shows the model was never loaded
    done = belle_main("eval", "bench", "--model", tmp_path, "--tasks", f"belle_zh_mc,{task}", "--output",
                      tmp_path / "run")
    assert one_line(done, message.format(scripted=scripted_tasks)), done.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.slow  # lm-eval indexes its thousands of task YAMLs (seconds), then runs the task
def test_local_task_through_the_cli_equals_lm_eval_directly(belle_main, tiny_model_dir, local_task_manager, offline,
                                                            tmp_path):
    run = tmp_path / "run"
    done = belle_main("eval", "bench", "--model", tiny_model_dir, "--tasks", "belle_zh_mc", "--device", "cpu",
                      "--output", run)
    assert done.returncode == 0, done.stderr
    bench = read(run)
    assert set(bench) >= {"model", "tasks", "lm_eval_version", "settings"}
    assert bench["chat_template"] == {"belle_zh_mc": False}  # multiple choice: no chat template by default
    assert bench["settings"] | {"model": None} == {"model": None, "base": None, "limit": None, "num_fewshot": None,
                                                   "template": None, "apply_chat_template": None, "include_path": [],
                                                   "dtype": "auto", "device": "cpu"}
    assert bench["loaded"] == {"dtype": "float32", "device": "cpu"}  # what dtype auto resolved to
    assert bench["name"] == tiny_model_dir.name  # compared with the answers' model in run.json
    figures = bench["tasks"]["belle_zh_mc"]
    assert set(figures) == {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr"}
    assert "| belle_zh_mc | acc |" in (run / "bench.md").read_text(encoding="utf-8")

    from lm_eval.models.huggingface import HFLM

    direct = lm_eval_results(HFLM(pretrained=str(tiny_model_dir), batch_size=8, device="cpu"), local_task_manager)
    expected = task_metrics(direct["results"]["belle_zh_mc"])
    assert figures == expected
    assert direct["n-samples"]["belle_zh_mc"]["effective"] == bench["n_samples"]["belle_zh_mc"] == 10

    again = belle_main("eval", "bench", "--model", tiny_model_dir, "--tasks", "belle_zh_mc", "--device", "cpu",
                       "--output", run)
    assert again.returncode == 0 and "already in" in again.stdout  # resumed: not rerun
    for flags, differ in ((["--limit", "3"], "limit"), (["--dtype", "bfloat16"], "dtype"),
                          (["--include-path", TEST_TASKS], "include_path"), (["--base", tmp_path], "base")):
        changed = belle_main("eval", "bench", "--model", tiny_model_dir, "--tasks", "belle_zh_mc", "--device", "cpu",
                             *flags, "--output", run)
        assert one_line(changed, f"other settings ({differ})"), changed.stderr

    report = belle_main("eval", "report", run)  # bench.json alone: a benchmarks-only report
    assert report.returncode == 0, report.stderr
    assert f"| belle_zh_mc acc | {expected['acc']:.3f} |" in report.stdout
    assert "Score" not in report.stdout

    (run / "bench.json").write_text(json.dumps({**bench, "lm_eval_version": "0.4.12"}), encoding="utf-8")
    older = belle_main("eval", "bench", "--model", tiny_model_dir, "--tasks", "belle_zh_mc", "--device", "cpu",
                       "--output", run)
    assert bench["lm_eval_version"] != "0.4.12" and one_line(older, "written with lm-eval 0.4.12"), older.stderr


@pytest.mark.slow
def test_generative_task_gets_the_chat_template_as_hflm(belle_main, tiny_model_dir, local_tasks, offline, tmp_path):
    from lm_eval.models.huggingface import HFLM

    run = tmp_path / "run"
    done = belle_main("eval", "bench", "--model", tiny_model_dir, "--tasks", "belle_test_gen", "--device", "cpu",
                      "--include-path", TEST_TASKS, "--output", run)
    assert done.returncode == 0, done.stderr
    bench = read(run)
    assert bench["chat_template"] == {"belle_test_gen": True}  # generate_until: the model's template, by default
    assert set(bench["tasks"]["belle_test_gen"]) == {"exact_match", "exact_match_stderr"}

    chat = {"apply_chat_template": True, "fewshot_as_multiturn": True}
    direct = lm_eval_results(HFLM(pretrained=str(tiny_model_dir), batch_size=8, device="cpu"), local_tasks, "belle_test_gen", **chat)
    assert bench["tasks"]["belle_test_gen"] == task_metrics(direct["results"]["belle_test_gen"])
    through_bench = lm_eval_results(load_lm(tiny_model_dir, load=LoadOptions(device="cpu")), local_tasks,
                                    "belle_test_gen", **chat)
    samples = [sorted(r["samples"]["belle_test_gen"], key=lambda s: s["doc_id"]) for r in (direct, through_bench)]
    assert [(s["arguments"], s["resps"]) for s in samples[0]] == [(s["arguments"], s["resps"]) for s in samples[1]]
    assert [s["doc_id"] for s in samples[0]] == [0, 1, 2, 3] and any(s["resps"][0][0] for s in samples[0])

    from belle.modeling import load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    prompt = samples[0][0]["arguments"][0][0]  # (context, generation kwargs) of the first request
    turns = [{"role": "user", "content": "问：一周有几天？\n答："}, {"role": "assistant", "content": "七天"},
             {"role": "user", "content": "问：中国的首都是哪座城市？\n答："}]
    assert prompt == tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)

    on_gpu = {**bench, "loaded": {"dtype": "bfloat16", "device": "cuda:0"}}  # as if its tasks ran elsewhere
    (run / "bench.json").write_text(json.dumps(on_gpu), encoding="utf-8")
    more = belle_main("eval", "bench", "--model", tiny_model_dir, "--tasks", "belle_test_gen,belle_zh_mc", "--device",
                      "cpu", "--include-path", TEST_TASKS, "--output", run)
    assert one_line(more, "its tasks ran on bfloat16 on cuda:0, this model loads on float32 on cpu"), more.stderr
    assert read(run) == on_gpu


@pytest.mark.slow
def test_group_without_aggregate_shows_its_subtasks(belle_main, tiny_model_dir, local_tasks, offline, tmp_path):
    run = tmp_path / "run"
    done = belle_main("eval", "bench", "--model", tiny_model_dir, "--tasks", "belle_test_group", "--limit", "2",
                      "--device", "cpu", "--include-path", TEST_TASKS, "--output", run)
    assert done.returncode == 0, done.stderr
    bench = read(run)
    assert bench["tasks"] == {"belle_test_group": {}}  # lm-eval gives the group no figure of its own
    assert set(bench["subtasks"]["belle_test_group"]) == {"belle_zh_mc", "belle_test_gen"}
    table = (run / "bench.md").read_text(encoding="utf-8")
    assert "| belle_test_group/belle_zh_mc | acc |" in table and "| belle_test_group/belle_test_gen | exact_match |" in table
    report = belle_main("eval", "report", run)
    assert report.returncode == 0 and "| belle_test_group/belle_zh_mc acc (limit 2) |" in report.stdout, report.stderr


@pytest.mark.slow  # imports lm-eval
@pytest.mark.parametrize("tasks, message", [
    ("belle_zh_mcq", "belle_zh_mcq: not an lm-eval task or group (did you mean belle_zh_mc"),
    ("belle_test_tag", "belle_test_tag: an lm-eval tag, a list of tasks with no score of its own; name its tasks "
                       "instead (belle_test_gen)"),
])
def test_unknown_tasks_and_tags_are_refused(belle_main, local_tasks, tmp_path, tasks, message):
    done = belle_main("eval", "bench", "--model", tmp_path, "--tasks", tasks, "--include-path", TEST_TASKS,
                      "--output", tmp_path / "run")
    assert one_line(done, message), done.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_damaged_gguf_is_refused(belle_main, local_tasks, tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 60)
    done = belle_main("eval", "bench", "--model", gguf, "--tasks", "belle_zh_mc", "--output", tmp_path / "run")
    assert one_line(done, "m.gguf: not a readable GGUF file"), done.stderr
    assert not (tmp_path / "run").exists()


def bench_figures(belle_main, model, run):
    done = belle_main("eval", "bench", "--model", model, "--tasks", "belle_zh_mc", "--device", "cpu", "--output", run)
    assert done.returncode == 0, done.stderr
    return read(run)["tasks"]["belle_zh_mc"]


def flat(scores):
    return [score for doc in scores for score, _ in doc]


@pytest.mark.slow
def test_lora_adapter_folder_equals_hflm_on_the_merged_model(belle_main, tiny_model_dir, local_tasks, offline,
                                                             tmp_path):
    from lm_eval.models.huggingface import HFLM
    from peft import LoraConfig, get_peft_model

    from belle.modeling import load_model, load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    base = load_model(tiny_model_dir, device="cpu", tokenizer=tokenizer)
    config = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    lora = get_peft_model(base, config)
    lora.save_pretrained(tmp_path / "adapter")  # records tiny_model_dir as its base; belle.json comes from there
    merged = lora.merge_and_unload().eval()

    figures = bench_figures(belle_main, tmp_path / "adapter", tmp_path / "run")
    direct = lm_eval_results(hflm(merged, tokenizer), local_tasks)
    assert figures == pytest.approx(task_metrics(direct["results"]["belle_zh_mc"]), abs=1e-9)
    through_bench = lm_eval_results(load_lm(tmp_path / "adapter", load=LoadOptions(device="cpu")), local_tasks)
    plain = lm_eval_results(HFLM(pretrained=str(tiny_model_dir), batch_size=8, device="cpu"), local_tasks)
    np.testing.assert_allclose(flat(loglikelihoods(through_bench)), flat(loglikelihoods(direct)), atol=1e-4, rtol=0)
    assert np.abs(np.subtract(flat(loglikelihoods(plain)), flat(loglikelihoods(direct)))).max() > 0.05  # the adapter counts


@pytest.mark.slow
def test_gptq_folder_equals_hflm_on_the_quantized_model(belle_main, tiny_gptq_dir, local_tasks, offline, tmp_path):
    from belle.modeling import load_model, load_tokenizer

    tokenizer = load_tokenizer(tiny_gptq_dir)
    model = load_model(tiny_gptq_dir, device="cpu", tokenizer=tokenizer).eval()
    figures = bench_figures(belle_main, tiny_gptq_dir, tmp_path / "run")
    direct = lm_eval_results(hflm(model, tokenizer), local_tasks)
    assert figures == pytest.approx(task_metrics(direct["results"]["belle_zh_mc"]), abs=1e-9)
