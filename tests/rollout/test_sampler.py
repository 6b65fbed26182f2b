"""The KV-cache sampler end to end on a tiny random model."""

import functools
import os
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from astor_jax.model import forward, make_mesh, shard_params, token_logprobs
from astor_jax.model.transformer import Transformer
from astor_jax.rollout import sampler as sampler_lib
from astor_jax.rollout.rows import to_batch_rows
from astor_jax.rollout.sampler import FINISH_EOS, FINISH_LENGTH, FINISH_STOP, Sampler, StopCondition
from tests.rollout.conftest import PAD_ID, TINY

MAX_NEW = 12
PROMPTS = [[5, 17, 3], [40, 2, 8, 9, 33, 12, 7, 1], [22], [6, 6, 50, 11, 19]]


@pytest.fixture(scope="module")
def sampler(tiny_model):
  """One call per batch (no host-thread parts): the reference the other samplers match."""
  model, _ = tiny_model
  return Sampler(model, max_new_tokens=MAX_NEW, prompt_buckets=(8,), pad_id=PAD_ID,
                 host_threads=1)


def reference_greedy(model, params, prompts, steps):
  """Greedy decoding by full forwards without a cache, one unpadded row per prompt.

  Rows start at column 0 and are right-padded; under the causal mask the pads
  after position t never influence the logits at t.
  """
  length = max(map(len, prompts)) + steps
  tokens = np.zeros((len(prompts), length), np.int32)
  lengths = np.asarray([len(p) for p in prompts])
  for r, p in enumerate(prompts):
    tokens[r, :len(p)] = p
  positions = np.broadcast_to(np.arange(length, dtype=np.int32), tokens.shape)
  rows = np.arange(len(prompts))
  for _ in range(steps):
    input_mask = positions < lengths[:, None]
    logits = np.asarray(forward(model, params, jnp.asarray(tokens), positions, input_mask))
    tokens[rows, lengths] = np.argmax(logits[rows, lengths - 1], axis=-1)
    lengths = lengths + 1
  return [tokens[r, len(p):len(p) + steps] for r, p in enumerate(prompts)]


@pytest.fixture(scope="module")
def greedy_out(tiny_model, sampler):
  _, params = tiny_model
  return jax.device_get(sampler(params, PROMPTS, jax.random.key(0), temperature=0.0))


def test_greedy_equals_step_by_step_full_forward(tiny_model, greedy_out):
  model, params = tiny_model
  expected = reference_greedy(model, params, PROMPTS, MAX_NEW)
  np.testing.assert_array_equal(greedy_out.tokens, np.stack(expected))
  assert len({tuple(row) for row in expected}) == len(PROMPTS)
  assert len(set(np.concatenate(expected))) > 15, "degenerate model: a few tokens forever"
  np.testing.assert_array_equal(greedy_out.lengths, MAX_NEW)
  np.testing.assert_array_equal(greedy_out.finish_reasons, FINISH_LENGTH)
  assert greedy_out.completion_mask.all()


def test_early_stops_in_a_padded_batch_match_unpadded_single_rows(tiny_model, sampler,
                                                                  greedy_out):
  model, params = tiny_model
  # Stop row 0 by EOS at its 4th token, row 1 by a 2-token stop sequence ending at its
  # 6th; rows 2 and 3 use an EOS id they never produce and a budget of 7 tokens.
  never = next(t for t in range(1, TINY.vocab_size)
               if t not in greedy_out.tokens[2] and t not in greedy_out.tokens[3])
  row0, row1 = greedy_out.tokens[0], greedy_out.tokens[1]
  eos0 = int(row0[3])
  stop1 = (int(row1[4]), int(row1[5]))
  assert eos0 not in row0[:3]
  assert all(tuple(row1[i:i + 2]) != stop1 for i in range(4))
  stops = [StopCondition(eos_ids=(eos0,)), StopCondition(stop_sequences=((99,), stop1)),
           StopCondition(eos_ids=(never,)), StopCondition(eos_ids=(never,))]
  budgets = [MAX_NEW, MAX_NEW, 7, 7]
  out = sampler(params, PROMPTS, jax.random.key(1), temperature=0.0, stop=stops,
                max_new_tokens=budgets)
  np.testing.assert_array_equal(out.lengths, [4, 6, 7, 7])
  np.testing.assert_array_equal(out.finish_reasons,
                                [FINISH_EOS, FINISH_STOP, FINISH_LENGTH, FINISH_LENGTH])
  for r, prompt in enumerate(PROMPTS):
    single = Sampler(model, max_new_tokens=MAX_NEW, prompt_buckets=(len(prompt),),
                     pad_id=PAD_ID)(params, [prompt], jax.random.key(2), temperature=0.0,
                                    stop=stops[r], max_new_tokens=budgets[r])
    np.testing.assert_array_equal(out.tokens[r], single.tokens[0], err_msg=f"row {r}")
    np.testing.assert_array_equal(out.completion_mask[r], single.completion_mask[0])
    n = int(out.lengths[r])
    np.testing.assert_array_equal(out.tokens[r, :n], greedy_out.tokens[r, :n])
    np.testing.assert_array_equal(out.tokens[r, n:], PAD_ID)
    assert not out.completion_mask[r, n:].any() and out.completion_mask[r, :n].all()
    np.testing.assert_array_equal(out.logprobs[r, n:], 0.0)


@pytest.mark.parametrize("temperature, top_p, top_k", [(1.0, 1.0, 0), (0.7, 0.9, 20)])
def test_logprobs_equal_the_trainers(tiny_model, sampler, temperature, top_p, top_k):
  model, params = tiny_model
  group_size = 3
  out = sampler(params, PROMPTS, jax.random.key(3), group_size=group_size,
                temperature=temperature, top_p=top_p, top_k=top_k)
  rows = to_batch_rows(out, group_size)
  logprobs, _ = token_logprobs(model, params, rows["tokens"], rows["positions"],
                               rows["input_mask"])
  mask = np.asarray(rows["completion_mask"])
  assert mask.sum() == len(PROMPTS) * group_size * MAX_NEW
  np.testing.assert_allclose(np.where(mask, logprobs, 0.0), rows["sampler_logprobs"],
                             atol=1e-5, rtol=0)
  # Processed log-probs: log of softmax(logits / T) restricted to top-k/top-p.
  logits = np.asarray(forward(model, params, rows["tokens"], rows["positions"],
                              rows["input_mask"]), np.float64)[:, :-1] / temperature
  tokens = np.asarray(rows["tokens"])[:, 1:]
  order = np.sort(logits, axis=-1)[..., ::-1]
  kth = order[..., top_k - 1:top_k] if top_k else order[..., -1:]
  logits = np.where(logits >= kth, logits, -np.inf)
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  sorted_probs = np.sort(probs, axis=-1)[..., ::-1]
  before = np.cumsum(sorted_probs, axis=-1) - sorted_probs
  cut = np.min(np.where(before < top_p, sorted_probs, np.inf), axis=-1, keepdims=True)
  probs = np.where(probs >= cut, probs, 0.0)
  probs /= probs.sum(-1, keepdims=True)
  with np.errstate(divide="ignore"):  # prompt columns may hold filtered-out tokens
    picked = np.log(np.take_along_axis(probs, tokens[..., None], axis=-1)[..., 0])
  processed = np.concatenate([np.zeros((mask.shape[0], 1)), picked], axis=1)
  np.testing.assert_allclose(
      np.asarray(out.processed_logprobs),
      np.where(mask, processed, 0.0)[:, -MAX_NEW:], atol=1e-5, rtol=0)


def test_batch_rows_follow_the_design_contract(greedy_out):
  rows = to_batch_rows(greedy_out, group_size=1)
  prompt_len = greedy_out.prompt_tokens.shape[1]
  assert rows["tokens"].shape == (len(PROMPTS), prompt_len + MAX_NEW)
  r = 0  # prompt of 3 tokens in a bucket of 8
  np.testing.assert_array_equal(rows["tokens"][r, :8], [0] * 5 + PROMPTS[r])
  np.testing.assert_array_equal(rows["positions"][r], [0] * 5 + list(range(3 + MAX_NEW)))
  np.testing.assert_array_equal(rows["input_mask"][r], [False] * 5 + [True] * (3 + MAX_NEW))
  np.testing.assert_array_equal(rows["completion_mask"][r], [False] * 8 + [True] * MAX_NEW)
  np.testing.assert_array_equal(rows["sampler_logprobs"][r, :8], 0.0)
  np.testing.assert_array_equal(rows["group_ids"], np.arange(len(PROMPTS)))


def test_groups_share_one_prefill_and_draw_distinct_rollouts(tiny_model, sampler):
  model, params = tiny_model
  traced_rows = []

  class Recording(Transformer):
    def hidden_states(self, tokens, *args, **kwargs):
      traced_rows.append(tokens.shape)
      return super().hidden_states(tokens, *args, **kwargs)

  spec = functools.partial(sampler_lib.generate, Recording(TINY), group_size=4,
                           max_new_tokens=MAX_NEW, pad_id=PAD_ID)
  n = len(PROMPTS) * 4
  tables = sampler_lib.SamplingParams(
      np.ones(n, np.float32), np.ones(n, np.float32), np.zeros(n, np.int32),
      np.full(n, MAX_NEW, np.int32), np.full((n, 1), -1, np.int32),
      np.full((n, 1, 1), -1, np.int32))
  jax.eval_shape(spec, params, np.zeros((4, 8), np.int32), np.ones((4, 8), bool),
                 jax.random.key(0), tables)
  # Prefill on 4 prompts, decode on 16 rows (one trace per decode segment).
  assert traced_rows == [(4, 8)] + [(16, 1)] * sampler_lib.auto_decode_segments(MAX_NEW)

  out = sampler(params, PROMPTS, jax.random.key(4), group_size=4, temperature=1.0)
  tokens = np.asarray(out.tokens).reshape(len(PROMPTS), 4, MAX_NEW)
  for group in tokens:
    assert len({tuple(row) for row in group}) == 4
  np.testing.assert_array_equal(np.asarray(out.prompt_tokens)[::4], np.asarray(
      out.prompt_tokens)[3::4])
  again = sampler(params, PROMPTS, jax.random.key(4), group_size=4, temperature=1.0)
  np.testing.assert_array_equal(out.tokens, again.tokens)
  other = sampler(params, PROMPTS, jax.random.key(5), group_size=4, temperature=1.0)
  assert np.mean(np.asarray(out.tokens) == np.asarray(other.tokens)) < 0.5
  greedy = sampler(params, PROMPTS, jax.random.key(4), group_size=4, temperature=0.0)
  for group in np.asarray(greedy.tokens).reshape(len(PROMPTS), 4, MAX_NEW):
    assert (group == group[0]).all()


def test_new_settings_never_recompile(tiny_model):
  """One program per kind of call (all greedy / sampled / sampled with top-p or top-k)."""
  model, params = tiny_model
  sampler = Sampler(model, max_new_tokens=MAX_NEW, prompt_buckets=(8,), pad_id=PAD_ID)
  sampled = [dict(temperature=1.0),
             dict(temperature=[0.0, 0.5, 1.0, 2.0], max_new_tokens=[1, 2, 3, 4],
                  stop=StopCondition(eos_ids=(1, 2), stop_sequences=((3, 4),))),
             dict(temperature=0.7, top_k=2048)]  # top-k >= vocab filters nothing
  greedy = [dict(temperature=0.0), dict(temperature=0.0, top_p=0.5, top_k=3)]
  filtered = [dict(temperature=0.7, top_p=0.9), dict(temperature=[0.0, 1.0, 1.0, 1.0],
                                                     top_k=[0, 3, 0, 0])]
  for kind, (settings, programs) in enumerate(((sampled, 1), (greedy, 2), (filtered, 3))):
    for i, kwargs in enumerate(settings):
      sampler(params, PROMPTS, jax.random.key(10 * kind + i), **kwargs)
    assert sampler._generate._cache_size() == programs
  sampler(params, [[1, 2]] * 4, jax.random.key(9))  # other lengths, same bucket
  assert sampler._generate._cache_size() == 3


@pytest.mark.parametrize("kwargs, match", [
    (dict(temperature=-1.0), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_k=[1, 2]), "top_k: got 2 values for 4 prompts"),
    (dict(max_new_tokens=MAX_NEW + 1), "max_new_tokens"),
    (dict(stop=StopCondition(eos_ids=tuple(range(5)))), "max_eos_ids"),
    (dict(stop=StopCondition(stop_sequences=((),))), "stop_sequences"),
    (dict(group_size=0), "group_size"),
])
def test_bad_arguments_are_named(tiny_model, sampler, kwargs, match):
  _, params = tiny_model
  with pytest.raises(ValueError, match=match):
    sampler(params, PROMPTS, jax.random.key(0), **kwargs)


def test_sharded_on_the_training_mesh_matches_one_device(tiny_model, greedy_out):
  model, params = tiny_model
  mesh = make_mesh(data=2, fsdp=2, tensor=2)
  sharded_params = shard_params(params, model, mesh)
  sampler = Sampler(model, max_new_tokens=MAX_NEW, prompt_buckets=(8,), pad_id=PAD_ID,
                    mesh=mesh)
  out = sampler(sharded_params, PROMPTS * 2, jax.random.key(0), temperature=0.0)
  np.testing.assert_array_equal(np.asarray(out.tokens), np.tile(greedy_out.tokens, (2, 1)))
  np.testing.assert_allclose(np.asarray(out.logprobs), np.tile(greedy_out.logprobs, (2, 1)),
                             atol=1e-5)
  # The params enter the program in the sharding they already have: no copy.
  compiled = sampler.lower(sharded_params, PROMPTS * 2, jax.random.key(0)).compile()
  expected = jax.tree.map(lambda x: x.sharding, sharded_params)
  got = compiled.input_shardings[0][0]
  for leaf, want, have in zip(jax.tree.leaves(sharded_params), jax.tree.leaves(expected),
                              jax.tree.leaves(got)):
    assert want.is_equivalent_to(have, leaf.ndim)


def _generate_fn(model, **kwargs):
  return jax.jit(functools.partial(sampler_lib.generate, model, max_new_tokens=MAX_NEW,
                                   pad_id=PAD_ID, **kwargs),
                 static_argnames=("group_size", "prompts_per_chunk", "any_sampled", "any_filtered",
                                  "total_rows"))


def test_segment_ends_cover_the_completion():
  assert sampler_lib.segment_ends(12, 1) == (12,)
  assert sampler_lib.segment_ends(12, 3) == (4, 8, 12)
  assert sampler_lib.segment_ends(12, 5) == (3, 5, 8, 10, 12)
  assert sampler_lib.segment_ends(128, 4) == (32, 64, 96, 128)
  assert sampler_lib.segment_ends(2, 4) == (1, 2)


@pytest.mark.parametrize("segments", [3, 5])
def test_segmented_decode_equals_one_segment(tiny_model, sampler, greedy_out, segments):
  """Segments (a cache that grows at boundaries) change no token, log-prob or stop.

  Row 0 stops by EOS at its 4th token and row 1 by a stop sequence at its 6th:
  on the boundary of segments 1 and 2 and inside segment 2 for 3 segments (ends 4, 8,
  12); inside segments 2 and 3 for 5 (ends 3, 5, 8, 10, 12).
  """
  model, params = tiny_model
  row0, row1 = greedy_out.tokens[0], greedy_out.tokens[1]
  stops = [StopCondition(eos_ids=(int(row0[3]),)),
           StopCondition(stop_sequences=((int(row1[4]), int(row1[5])),)),
           StopCondition(), StopCondition()]
  assert int(row0[3]) not in row0[:3]
  ((args, _),), static = sampler._arguments(PROMPTS, jax.random.key(7), 2,
                                            [0.0, 0.0, 1.0, 0.7], 1.0, 0,
                                            [MAX_NEW, MAX_NEW, MAX_NEW, 9], stops)
  whole = _generate_fn(model, decode_segments=1)(params, *args, **static)
  split = _generate_fn(model, decode_segments=segments)(params, *args, **static)
  np.testing.assert_array_equal(split.tokens, whole.tokens)
  np.testing.assert_array_equal(split.lengths, whole.lengths)
  np.testing.assert_array_equal(split.finish_reasons, whole.finish_reasons)
  np.testing.assert_allclose(split.logprobs, whole.logprobs, atol=1e-6)
  np.testing.assert_allclose(split.processed_logprobs, whole.processed_logprobs, atol=1e-6)
  assert np.asarray(split.lengths)[:4].tolist() == [4, 4, 6, 6]  # greedy rows stopped early
  np.testing.assert_array_equal(np.asarray(split.tokens)[0], greedy_out.tokens[0][:4].tolist()
                                + [PAD_ID] * (MAX_NEW - 4))


@pytest.mark.parametrize("max_new, loops", [(12, 1), (255, 1), (512, 2), (1024, 4), (8192, 4)])
def test_default_decode_loops_follow_the_generation_length(max_new, loops):
  assert sampler_lib.auto_decode_segments(max_new) == loops


def test_compiled_decode_loops(tiny_model, sampler):
  """Short generations compile one decode loop by default; an explicit count is kept."""
  model, params = tiny_model
  ((args, _),), static = sampler._arguments(PROMPTS, jax.random.key(0), 1, 1.0, 1.0, 0,
                                            MAX_NEW, StopCondition())

  def while_loops(decode_segments):
    lowered = _generate_fn(model, decode_segments=decode_segments).lower(params, *args, **static)
    return lowered.as_text().count("stablehlo.while")

  one = while_loops(1)
  assert while_loops(None) == one and while_loops(3) == one + 2


def test_all_rows_finished_ends_every_segment(tiny_model, greedy_out):
  """With every row stopped in segment 1, later segments run no decode step."""
  model, params = tiny_model
  calls = []

  class Counting(Transformer):
    def hidden_states(self, tokens, *args, **kwargs):
      jax.debug.callback(lambda: calls.append(1))
      return super().hidden_states(tokens, *args, **kwargs)

  counting = Counting(TINY)
  sampler = Sampler(counting, max_new_tokens=MAX_NEW, prompt_buckets=(8,), pad_id=PAD_ID,
                    decode_segments=3, host_threads=1)
  out = sampler(params, PROMPTS, jax.random.key(0), temperature=0.0, max_new_tokens=3)
  np.testing.assert_array_equal(out.tokens, np.where(np.arange(MAX_NEW) < 3, greedy_out.tokens,
                                                     PAD_ID))
  assert len(calls) == 1 + 3  # the prefill, then one decode call per generated token


@pytest.mark.parametrize("group_size, chunk_rows", [(2, 4), (3, 3)])
def test_row_chunks_give_the_same_rollouts(tiny_model, sampler, group_size, chunk_rows):
  model, params = tiny_model
  chunked = Sampler(model, max_new_tokens=MAX_NEW, prompt_buckets=(8,), pad_id=PAD_ID,
                    chunk_rows=chunk_rows)
  kwargs = dict(group_size=group_size, temperature=[1.0, 0.0, 0.8, 1.0], top_p=0.9,
                stop=StopCondition(eos_ids=(3, 7)))
  assert chunked.prompts_per_chunk(len(PROMPTS), 8, group_size) == chunk_rows // group_size
  out = chunked(params, PROMPTS, jax.random.key(11), **kwargs)
  whole = sampler(params, PROMPTS, jax.random.key(11), **kwargs)
  for name in ("tokens", "completion_mask", "lengths", "finish_reasons", "prompt_tokens"):
    np.testing.assert_array_equal(getattr(out, name), getattr(whole, name), err_msg=name)
  np.testing.assert_allclose(out.logprobs, whole.logprobs, atol=1e-6)
  np.testing.assert_allclose(out.processed_logprobs, whole.processed_logprobs, atol=1e-6)
  assert len(set(np.asarray(out.lengths).tolist())) > 1  # some rows stopped early


@pytest.mark.parametrize("host_threads, prompts, parts, chunk_rows", [
    (2, PROMPTS, 2, 0), (3, PROMPTS, 2, 0), (4, PROMPTS, 4, 0), (2, PROMPTS[:3], 1, 0),
    (2, PROMPTS * 2, 2, 4)])
def test_host_thread_parts_give_the_same_rollouts(tiny_model, sampler, host_threads, prompts,
                                                  parts, chunk_rows):
  """A call split over host threads returns the rows of one call, row draws included."""
  model, params = tiny_model
  split = Sampler(model, max_new_tokens=MAX_NEW, prompt_buckets=(8,), pad_id=PAD_ID,
                  host_threads=host_threads, chunk_rows=chunk_rows)
  assert sampler_lib.host_parts(len(prompts), host_threads) == parts
  n = len(prompts)
  kwargs = dict(group_size=2, temperature=([1.0, 0.0, 0.8, 1.5] * 2)[:n],
                top_p=([1.0, 1.0, 0.9, 1.0] * 2)[:n], max_new_tokens=([MAX_NEW, 5] * 4)[:n],
                stop=StopCondition(eos_ids=(3, 7), stop_sequences=((11, 12),)))
  out = split(params, prompts, jax.random.key(13), **kwargs)
  whole = sampler(params, prompts, jax.random.key(13), **kwargs)
  for name in ("tokens", "completion_mask", "lengths", "finish_reasons", "prompt_tokens",
               "prompt_mask"):
    np.testing.assert_array_equal(getattr(out, name), getattr(whole, name), err_msg=name)
  # Parts batch fewer rows per matmul: float rounding moves log-probs by up to ~1e-5.
  np.testing.assert_allclose(out.logprobs, whole.logprobs, atol=1e-5)
  np.testing.assert_allclose(out.processed_logprobs, whole.processed_logprobs, atol=1e-5)
  assert len(set(np.asarray(out.lengths).tolist())) > 1  # some rows stopped early
  # All parts run one program, lowered for one part's prompts.
  lowered = split.lower(params, prompts, jax.random.key(13), **kwargs)
  assert lowered.args_info[0][1].shape == (n // parts, 8)  # (args, kwargs): prompt_tokens
  assert split._generate._cache_size() == 1


def test_host_thread_parts_run_at_the_same_time(tiny_model, sampler):
  """Each part's program is called from its own thread, all at once (a barrier of all parts)."""
  model, params = tiny_model
  split = Sampler(model, max_new_tokens=MAX_NEW, prompt_buckets=(8,), pad_id=PAD_ID,
                  host_threads=4)
  generate, barrier, threads = split._generate, threading.Barrier(4, timeout=60), set()

  def waiting(*args, **kwargs):
    threads.add(threading.get_ident())
    barrier.wait()  # raises BrokenBarrierError unless the four parts are in flight together
    return generate(*args, **kwargs)

  split._generate = waiting
  out = split(params, PROMPTS, jax.random.key(3), temperature=0.0)
  assert len(threads) == 4 and threading.get_ident() not in threads
  np.testing.assert_array_equal(out.tokens, sampler(params, PROMPTS, jax.random.key(3),
                                                    temperature=0.0).tokens)


def test_host_threads_auto_is_two_on_one_cpu_device_only(tiny_model):
  model, _ = tiny_model
  build = lambda **kw: Sampler(model, max_new_tokens=MAX_NEW, prompt_buckets=(8,),
                               pad_id=PAD_ID, **kw)
  cores = len(os.sched_getaffinity(0))
  assert build().host_threads == min(2, cores)  # no mesh: the default (CPU) device
  one_device = make_mesh(data=1, devices=jax.devices()[:1])
  assert build(mesh=one_device).host_threads == min(2, cores)
  assert build(mesh=make_mesh(data=2, fsdp=2, tensor=2)).host_threads == 1
  assert build(host_threads=3).host_threads == 3
  for bad in (-1, 1.5, True):
    with pytest.raises(ValueError, match="host_threads"):
      build(host_threads=bad)
  assert [sampler_lib.host_parts(b, 4) for b in (1, 2, 3, 5, 6, 8)] == [1, 2, 3, 1, 3, 4]


def test_a_part_of_a_batch_draws_its_rows_uniforms(tiny_model, sampler):
  """`generate` with row_offset / total_rows: the rows of a part of a sampled batch."""
  model, params = tiny_model
  whole = sampler(params, PROMPTS, jax.random.key(21), group_size=2, temperature=1.0)
  ((args, _),), static = sampler._arguments(PROMPTS[2:], jax.random.key(21), 2, 1.0, 1.0, 0,
                                            MAX_NEW, StopCondition())
  part = _generate_fn(model)(params, *args, **static, row_offset=jnp.int32(4), total_rows=8)
  np.testing.assert_array_equal(part.tokens, np.asarray(whole.tokens)[4:])
  alone = _generate_fn(model)(params, *args, **static)  # the same prompts as a batch of their own
  assert not np.array_equal(alone.tokens, part.tokens)
  with pytest.raises(ValueError, match="row_offset and total_rows"):
    _generate_fn(model)(params, *args, **static, total_rows=8)
  with pytest.raises(ValueError, match="total_rows: got 2"):
    _generate_fn(model)(params, *args, **static, row_offset=jnp.int32(0), total_rows=2)


def test_prompts_per_chunk_picks_a_divisor_that_fits():
  assert sampler_lib.prompts_per_chunk(128, 8, 1024) == 128
  assert sampler_lib.prompts_per_chunk(128, 8, 512) == 64
  assert sampler_lib.prompts_per_chunk(128, 8, 100) == 8  # 12 does not divide 128
  assert sampler_lib.prompts_per_chunk(12, 2, 16, row_shards=4) == 4  # 6 fits, 4 shards
  assert sampler_lib.prompts_per_chunk(12, 2, 16, row_shards=5) == 6  # no multiple of 5
  with pytest.raises(ValueError, match="chunk_rows"):
    sampler_lib.prompts_per_chunk(4, 8, 4)
  with pytest.raises(ValueError, match="chunk_rows"):
    Sampler(Transformer(TINY), max_new_tokens=4, prompt_buckets=(8,), pad_id=0, chunk_rows=-1)


def test_auto_chunk_rows_budget_a_share_of_the_free_memory():
  per_row = sampler_lib.kv_cache_bytes_per_row(TINY, 20)
  assert per_row == 2 * TINY.num_layers * TINY.num_kv_heads * 20 * TINY.head_dim * 4
  assert sampler_lib.kv_cache_bytes_per_row(TINY, 20, kv_head_shards=2) == per_row // 2
  assert sampler_lib.auto_chunk_rows(TINY, 20, 10 * per_row, cache_share=0.5) == 5
  assert sampler_lib.auto_chunk_rows(TINY, 20, 10 * per_row, cache_share=0.5,
                                     row_shards=4) == 20
  assert sampler_lib.auto_chunk_rows(TINY, 20, 50 * per_row) == 50 * sampler_lib.AUTO_CACHE_SHARE
  assert sampler_lib.auto_chunk_rows(TINY, 20, 0) is None  # CPU: nothing known, no chunks


def test_sharded_row_chunks_match_one_device(tiny_model, greedy_out):
  model, params = tiny_model
  mesh = make_mesh(data=2, fsdp=2, tensor=2)
  sampler = Sampler(model, max_new_tokens=MAX_NEW, prompt_buckets=(8,), pad_id=PAD_ID,
                    mesh=mesh, chunk_rows=8)
  assert sampler.prompts_per_chunk(16, 8, 1) == 8
  out = sampler(shard_params(params, model, mesh), PROMPTS * 4, jax.random.key(0),
                temperature=0.0)
  np.testing.assert_array_equal(np.asarray(out.tokens), np.tile(greedy_out.tokens, (4, 1)))


def test_prefill_in_query_blocks_gives_the_same_tokens(tiny_model, greedy_out, monkeypatch):
  from astor_jax.model import transformer

  model, params = tiny_model
  monkeypatch.setattr(transformer, "QUERY_BLOCK", 3)  # 8-token prompts: 3 query blocks
  sampler = Sampler(model, max_new_tokens=MAX_NEW, prompt_buckets=(8,), pad_id=PAD_ID)
  out = sampler(params, PROMPTS, jax.random.key(0), temperature=0.0)
  np.testing.assert_array_equal(out.tokens, greedy_out.tokens)
  np.testing.assert_allclose(out.logprobs, greedy_out.logprobs, atol=1e-5)
