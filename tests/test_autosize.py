"""The auto-sizing rule: a valid shape that fits memory for any book and budget, and a cached probe."""

import pytest

from azr_trainer import autosize
from azr_trainer.model import estimate_training_memory

SLOW_CPU = autosize.MachineSpeed(threads=1, fp32_gflops=20.0, bf16_gflops=2.0)
FAST_CPU = autosize.MachineSpeed(threads=8, fp32_gflops=600.0, bf16_gflops=1500.0)


@pytest.mark.parametrize("book_bytes", [1_000, 30_000, 320_000, 5_000_000, 100_000_000])
@pytest.mark.parametrize("minutes", [1, 10, 60, 24 * 60])
@pytest.mark.parametrize("speed", [SLOW_CPU, FAST_CPU], ids=["slow", "fast"])
def test_plan_is_valid_and_fits_memory(book_bytes, minutes, speed):
    memory = 4 * 2**30
    p = autosize.plan(book_bytes, minutes, speed, memory_bytes=memory)
    p.model.validate()  # raises on an invalid shape
    assert p.model.max_seq_len == p.seq_len and p.batch_size >= 1
    assert estimate_training_memory(p.model, p.batch_size, p.seq_len) <= memory // 2
    assert p.asked_time == pytest.approx(minutes * 60)
    # the whole time, or less where the books would be read more than the useful number of times
    assert p.max_time == pytest.approx(minutes * 60) or (
        autosize.SHORTEST_PLAN_S <= p.max_time < minutes * 60
        and (p.epochs <= autosize.USEFUL_EPOCHS * 1.05 or p.max_time == autosize.SHORTEST_PLAN_S))
    assert 0 < p.learning_rate <= 3e-3 and p.warmup_iters >= 1
    # a warm-up of at least the anchor's steps (a short one at this rate costs), within a quarter of the run
    steps = p.expected_tokens / (p.batch_size * p.seq_len)
    assert min(autosize.WARMUP_STEPS, steps / 4) - 1 <= p.warmup_iters <= max(10, steps / 4)
    # a book is never much smaller than the model learning it
    nonembedding = p.parameters - p.model.vocab_size * p.model.d_model
    assert nonembedding <= max(autosize.MAX_PARAMS_PER_BOOK_TOKEN * book_bytes, 400_000)


def test_more_time_or_a_faster_machine_never_means_a_smaller_model():
    sizes = [autosize.plan(50_000_000, m, SLOW_CPU).parameters for m in (1, 5, 30, 240, 1440)]
    assert sizes == sorted(sizes) and sizes[-1] > 3 * sizes[0]
    assert autosize.plan(50_000_000, 30, FAST_CPU).parameters > autosize.plan(50_000_000, 30, SLOW_CPU).parameters


def test_a_small_book_gets_the_time_it_can_use_and_a_large_one_all_of_it():
    novel = 330_000  # a novel: ten minutes on a 2-core laptop with bf16 units read it ~18 times
    laptop = autosize.MachineSpeed(threads=2, fp32_gflops=77.0, bf16_gflops=129.0)
    assert autosize.plan(novel, 10, laptop).max_time == 10 * 60
    asked = autosize.plan(novel, 30, laptop)
    assert autosize.SHORTEST_PLAN_S < asked.max_time < 30 * 60 and asked.asked_time == 30 * 60
    assert autosize.USEFUL_EPOCHS * 0.8 <= asked.epochs <= autosize.USEFUL_EPOCHS * 1.05
    # more time asked changes next to nothing once the book is read often enough
    longer = autosize.plan(novel, 60, laptop)
    assert longer.model == asked.model and abs(longer.max_time - asked.max_time) <= 6
    # a fast machine and a tiny book: never less than a minute
    assert autosize.plan(2_000, 10, FAST_CPU).max_time == autosize.SHORTEST_PLAN_S
    # where the time cannot read the book too often, the plan takes all of it
    for book, minutes in ((100_000_000, 10), (1_100_000, 3), (225_000, 1)):
        p = autosize.plan(book, minutes, SLOW_CPU)
        assert p.max_time == minutes * 60
    # the character tokenizer counts characters, not bytes: Cyrillic text is two bytes a letter
    by_bytes = autosize.plan(60_000, 10, FAST_CPU)
    by_chars = autosize.plan(60_000, 10, FAST_CPU, book_chars=33_000)
    assert by_bytes.model.tokenizer == by_chars.model.tokenizer == "char"
    assert by_chars.epochs == pytest.approx(by_chars.expected_tokens / 33_000, rel=0.01)
    assert by_bytes.epochs == pytest.approx(by_bytes.expected_tokens / 60_000, rel=0.01)


def test_a_book_too_small_for_the_time_gets_a_larger_model_for_all_of_it():
    """Where the shape the arithmetic asks for would read the books far more than the useful
    number of times, a larger one (within the books' cap) that fills the time is planned; only
    where even that one reads them too often does the plan take less time."""
    novel = 225_000
    fp32_laptop = autosize.MachineSpeed(threads=1, fp32_gflops=64.0, bf16_gflops=70.0, fp32_by_width=[55.0, 73.0])
    five = autosize.plan(novel, 5, fp32_laptop)
    assert five.max_time == 5 * 60 and five.epochs <= autosize.USEFUL_EPOCHS * 1.05
    # the shape the arithmetic alone asks for (a book read only a few times) is smaller, and
    # would have read the novel far more often in those five minutes
    alone = autosize.plan(1_500_000, 5, fp32_laptop)
    assert autosize._nonembedding(alone.model) < autosize._nonembedding(five.model)
    assert alone.expected_tokens_per_s * 5 * 60 / (novel / autosize.BYTES_PER_TOKEN) > 1.05 * autosize.USEFUL_EPOCHS
    # more time never means a smaller model or a shorter plan, for a small book as for a large one
    plans = [autosize.plan(novel, m, fp32_laptop) for m in (1, 3, 5, 10, 20, 60, 240)]
    assert [p.parameters for p in plans] == sorted(p.parameters for p in plans)
    assert [p.max_time for p in plans] == sorted(p.max_time for p in plans)
    # ... also on a GPU, where a narrow step is bound by launching kernels and reads fewer tokens
    # than a middling one: what fills the time is larger than the best shape, never smaller
    gpu = autosize.MachineSpeed(threads=16, fp32_gflops=0.0, bf16_gflops=1280.0, device="cuda",
                                widths=[96, 288, 576, 768], bf16_by_width=[1280.0, 31300.0, 145600.0, 184600.0])
    sizes = [autosize.plan(20_000_000, m, gpu, memory_bytes=80 * 2**30).parameters for m in (10, 11.8, 12, 13, 14, 15, 20)]
    assert sizes == sorted(sizes)


def test_small_books_get_small_models_and_short_windows():
    tiny = autosize.plan(2_000, 60, FAST_CPU)
    assert tiny.model.tokenizer == "char" and tiny.seq_len * 10 <= 2_000 * 2
    big = autosize.plan(100_000_000, 60, FAST_CPU)
    assert big.model.tokenizer == "bpe" and big.parameters > 5 * tiny.parameters


def test_little_memory_shrinks_the_batch_or_the_model():
    roomy = autosize.plan(100_000_000, 1440, FAST_CPU, memory_bytes=64 * 2**30)
    tight = autosize.plan(100_000_000, 1440, FAST_CPU, memory_bytes=256 * 2**20)
    assert estimate_training_memory(tight.model, tight.batch_size, tight.seq_len) <= 128 * 2**20
    assert (tight.parameters, tight.batch_size) < (roomy.parameters, roomy.batch_size)


def test_precision_follows_the_measurement():
    assert SLOW_CPU.precision == "fp32" and FAST_CPU.precision == "bf16"


def test_bf16_is_not_chosen_where_the_wider_probes_found_it_slower():
    """Seen on a busy 2-core machine: the small probe put bf16 1.36× ahead, the width probes
    after it found bf16 15× and 1.8× slower; every plan was then sized for a speed 7× too low."""
    noisy = autosize.MachineSpeed(threads=2, fp32_gflops=83.43, bf16_gflops=113.79,
                                  fp32_by_width=[91.21, 127.71], bf16_by_width=[6.15, 72.22])
    assert noisy.precision == "fp32" and noisy.gflops_at(autosize.WIDTH_PROBES[0]) == 91.21
    consistent = autosize.MachineSpeed(threads=2, fp32_gflops=83.43, bf16_gflops=113.79,
                                       fp32_by_width=[91.21, 127.71], bf16_by_width=[120.0, 300.0])
    assert consistent.precision == "bf16"


def test_machine_speed_is_measured_once_and_cached(tmp_path, monkeypatch):
    calls = []
    real = autosize.measure_speed

    def counting(threads, seconds=1.0, device=None):
        calls.append(threads)
        return real(threads, seconds=0.05, device=device)

    monkeypatch.setattr(autosize, "measure_speed", counting)
    first = autosize.machine_speed(tmp_path, 1)
    second = autosize.machine_speed(tmp_path, 1)
    assert calls == [1] and first == second and first.fp32_gflops > 0
    autosize.machine_speed(tmp_path, 2)  # another thread count is another measurement
    assert calls == [1, 2]
    (tmp_path / autosize.SPEED_FILE).write_text("not json", encoding="utf-8")
    assert autosize.machine_speed(tmp_path, 1).fp32_gflops > 0  # a damaged cache is measured again
    assert calls == [1, 2, 1]


@pytest.mark.parametrize("book_bytes", [1_000, 30_000, 120_000, 225_000, 1_100_000, 5_000_000, 100_000_000])
def test_the_plan_never_draws_the_tokenizers_own_warning(book_bytes):
    # the auto plan and the trainer's vocabulary check use one rule: a person who takes the
    # recommended model is never told in the log that its vocabulary is too large
    from azr_trainer.tokenizer import vocab_size_warning
    p = autosize.plan(book_bytes, 10, SLOW_CPU)
    train_bytes = int(book_bytes * 0.9)
    assert vocab_size_warning(p.model.tokenizer, p.model.vocab_size, train_bytes) is None


def test_many_passes_over_a_small_book_get_dropout_and_large_books_none():
    small = autosize.plan(225_000, 10, FAST_CPU)   # a short novel: read many times in ten minutes
    large = autosize.plan(100_000_000, 10, SLOW_CPU)  # far more text than the time can read once
    assert small.epochs > autosize.DROPOUT_BY_EPOCHS[0][0] and small.dropout > 0
    assert large.epochs < 1 and large.dropout == 0
    assert small.train_settings()["dropout"] == small.dropout
    # ... and a rate that decays to zero, where the large book's stops at the usual 5%
    assert small.train_settings()["min_lr_ratio"] == 0.0 and large.min_lr_ratio == 0.05
    rates = [autosize.dropout_for(e) for e in (0.5, 2, 4, 16, 40, 400)]
    assert rates == sorted(rates) and rates[0] == 0 and rates[-1] <= 0.3


def test_a_book_read_many_times_gets_more_weight_decay_than_one_read_once():
    small = autosize.plan(225_000, 10, FAST_CPU)
    large = autosize.plan(100_000_000, 10, SLOW_CPU)
    assert large.weight_decay == 0.1  # text seen about once: the usual amount
    assert small.weight_decay > 1 and small.train_settings()["weight_decay"] == small.weight_decay
    decays = [autosize.weight_decay_for(e) for e in (0.5, 2, 4, 16, 40, 400)]
    assert decays == sorted(decays) and decays[0] == 0.1


def test_training_precision_follows_the_setting_then_the_probe(tmp_path, monkeypatch):
    import torch
    cpu = torch.device("cpu")
    monkeypatch.delenv(autosize.PRECISION_ENV, raising=False)
    assert autosize.training_precision("fp32", cpu, tmp_path, 1) == "fp32"
    assert autosize.training_precision("bf16", cpu, tmp_path, 1) == "bf16"
    for speed, expected in ((FAST_CPU, "bf16"), (SLOW_CPU, "fp32")):
        monkeypatch.setattr(autosize, "machine_speed", lambda home, threads, device=None, s=speed: s)
        assert autosize.training_precision("auto", cpu, tmp_path, 1) == expected
    monkeypatch.setenv(autosize.PRECISION_ENV, "fp32")
    assert autosize.training_precision("auto", cpu, tmp_path, 1) == "fp32"


def test_the_probe_times_a_training_step_in_both_precisions():
    speed = autosize.measure_speed(1, seconds=0.05)
    assert speed.fp32_gflops > 0 and speed.bf16_gflops > 0 and speed.precision in ("fp32", "bf16")
    # and a narrow and a wide model in fp32 (and in bf16 where it won)
    assert len(speed.fp32_by_width) == 2 and min(speed.fp32_by_width) > 0
    assert (speed.bf16_by_width is not None) == (speed.bf16_gflops > 1.3 * speed.fp32_gflops)
    narrow, wide = autosize.WIDTH_PROBES
    rate = speed.bf16_by_width if speed.precision == "bf16" else speed.fp32_by_width
    assert speed.gflops_at(narrow) == pytest.approx(rate[0]) and speed.gflops_at(wide) == pytest.approx(rate[1])


def test_a_wide_model_is_planned_at_the_rate_measured_for_wide_matrices():
    """Wide matrices run nearer the machine's peak: how much nearer is measured, not assumed."""
    narrow, wide = autosize.WIDTH_PROBES
    speed = autosize.MachineSpeed(threads=1, fp32_gflops=50.0, bf16_gflops=5.0, fp32_by_width=[40.0, 90.0])
    assert speed.gflops_at(narrow) == 40.0 and speed.gflops_at(wide) == 90.0
    middle = speed.gflops_at(int((narrow * wide) ** 0.5))
    assert 40.0 < middle < 90.0 and middle == pytest.approx((40.0 * 90.0) ** 0.5, rel=0.02)
    assert speed.gflops_at(narrow // 2) == 40.0 and speed.gflops_at(wide * 4) == 90.0  # no extrapolation
    flat = autosize.MachineSpeed(threads=1, fp32_gflops=50.0, bf16_gflops=5.0)  # an older cached probe
    assert flat.gflops_at(wide) == 50.0
    # the plan reads more tokens in the same minutes where wide steps measured faster
    big_book = 50_000_000
    faster_wide = autosize.plan(big_book, 60, speed)
    same_everywhere = autosize.plan(big_book, 60, autosize.MachineSpeed(1, 50.0, 5.0, fp32_by_width=[40.0, 40.0]))
    assert faster_wide.model.d_model > narrow and faster_wide.expected_tokens > same_everywhere.expected_tokens


def test_plans_count_bf16_speed_only_when_training_runs_in_bf16():
    assert autosize.as_trained(FAST_CPU, "bf16").gflops == FAST_CPU.bf16_gflops
    assert autosize.as_trained(FAST_CPU, "fp32").gflops == FAST_CPU.fp32_gflops
    # the same book and minutes buy a larger model where training runs faster
    assert autosize.plan(50_000_000, 30, autosize.as_trained(FAST_CPU, "bf16")).parameters > \
        autosize.plan(50_000_000, 30, autosize.as_trained(FAST_CPU, "fp32")).parameters


def test_a_gpu_speed_is_read_between_its_probed_widths():
    """A GPU's probe times several shapes of the depth dial (launch-bound when narrow, near the
    chip's peak when wide); a plan reads the rate between the two nearest, never beyond them."""
    gpu = autosize.MachineSpeed(threads=16, fp32_gflops=0.0, bf16_gflops=1200.0, device="cuda",
                                widths=[96, 288, 576, 768], bf16_by_width=[1200.0, 11000.0, 69000.0, 129000.0])
    assert gpu.precision == "bf16"
    assert gpu.gflops_at(96) == 1200.0 and gpu.gflops_at(576) == 69000.0 and gpu.gflops_at(768) == 129000.0
    assert gpu.gflops_at(48) == 1200.0 and gpu.gflops_at(2048) == 129000.0
    between = gpu.gflops_at(int((288 * 576) ** 0.5))
    assert between == pytest.approx((11000.0 * 69000.0) ** 0.5, rel=0.02)
    assert autosize.as_trained(gpu, "fp32") == gpu  # measured in the precision it trains in
    # the same book and minutes: a GPU buys a larger model than a laptop core, and a valid one
    book = 5_000_000
    on_gpu, on_cpu = autosize.plan(book, 10, gpu), autosize.plan(book, 10, SLOW_CPU)
    assert on_gpu.parameters > 2 * on_cpu.parameters
    assert on_gpu.expected_tokens > 10 * on_cpu.expected_tokens
    on_gpu.model.validate()
    assert on_gpu.precision == "bf16"
