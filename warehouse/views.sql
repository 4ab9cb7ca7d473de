-- Views of the rollout warehouse. `warehouse.catalog` defines one `_<table>` relation per table first (the committed
-- Parquet files only), then runs this file. Every row carries run_id and iteration; rows join on rollout_id.

CREATE OR REPLACE VIEW rollouts AS SELECT * FROM _rollouts;
CREATE OR REPLACE VIEW scores AS SELECT * FROM _scores;
CREATE OR REPLACE VIEW planning AS SELECT * FROM _planning;
CREATE OR REPLACE VIEW advantages AS SELECT * FROM _advantages;
CREATE OR REPLACE VIEW train_steps AS SELECT * FROM _train_steps;
CREATE OR REPLACE VIEW checkpoints AS SELECT * FROM _checkpoints;
CREATE OR REPLACE VIEW commits AS SELECT * FROM _commits;
CREATE OR REPLACE VIEW metrics AS SELECT * FROM _metrics;
CREATE OR REPLACE VIEW strategic_grams AS SELECT * FROM _strategic_grams;  -- mined SG sets, run_id 'sgs'

-- Every attempt of every stage: `failed` ones carry the error and traceback; a `running` one that a later attempt
-- of the same stage followed was interrupted (killed).
CREATE OR REPLACE VIEW stage_attempts AS
SELECT * REPLACE (
    CASE WHEN status = 'running' AND lead(started_at) OVER w IS NOT NULL THEN 'interrupted' ELSE status END AS status
)
FROM _stage_attempts
WINDOW w AS (PARTITION BY run_id, iteration, stage ORDER BY started_at);

-- Each run's vocabulary: token ids with their text, from the tokenizer.json saved with the run's checkpoints (no
-- table stores per-token text). Byte-level BPE pieces (GPT-2, Llama 3, Qwen, the tiny policy) are mapped back to
-- their bytes (the inverse of GPT-2's bytes_to_unicode) and decoded; a piece that is only part of a UTF-8 character,
-- and every piece of another tokenizer kind, has NULL text. Empty until a run's first checkpoint is committed.
CREATE OR REPLACE VIEW vocab AS
WITH added AS (
    SELECT run_id, (a.value ->> 'id')::INTEGER AS token_id, a.value ->> 'content' AS piece, a.value ->> 'content' AS text
    FROM _tokenizers, json_each(tokenizer, '$.added_tokens') AS a
), pieces AS (
    SELECT run_id, v.value::INTEGER AS token_id, v.key AS piece,
           CASE WHEN tokenizer ->> '$.decoder.type' = 'ByteLevel' THEN try(decode(from_hex(array_to_string(
               [printf('%02x', CASE WHEN unicode(c) < 256 THEN unicode(c) WHEN unicode(c) < 289 THEN unicode(c) - 256
                                    WHEN unicode(c) < 323 THEN unicode(c) - 162 ELSE 173 END)
                FOR c IN string_split(v.key, '')], '')))) END AS text
    FROM _tokenizers, json_each(tokenizer, '$.model.vocab') AS v
)
SELECT * FROM added
UNION ALL
SELECT * FROM pieces WHERE NOT EXISTS (SELECT 1 FROM added WHERE added.run_id = pieces.run_id AND added.token_id = pieces.token_id);

-- One row per response token, with everything aligned to it. `position` counts from 0 within the response; the
-- planning and advantage columns are NULL until the annotate and update stages of the iteration commit.
CREATE OR REPLACE VIEW tokens AS
WITH t AS (
    SELECT r.run_id, r.iteration, r.rollout_id,
           generate_subscripts(r.response_token_ids, 1) - 1 AS position,
           unnest(r.response_token_ids) AS token_id,
           unnest(r.sampler_logprobs) AS sampler_logprob,
           unnest(p.planning_mask) AS planning,
           unnest(a.advantage) AS advantage,
           unnest(a.amplified_mask) AS amplified,
           unnest(a.old_logprob) AS old_logprob,
           unnest(a.entropy) AS entropy
    FROM rollouts r
    LEFT JOIN planning p USING (run_id, iteration, rollout_id)
    LEFT JOIN advantages a USING (run_id, iteration, rollout_id)
)
SELECT t.run_id, t.iteration, t.rollout_id, t.position, t.token_id, v.text AS token_text,
       t.planning = 1 AS is_planning, t.amplified = 1 AS is_amplified, t.advantage, t.entropy, t.old_logprob,
       t.sampler_logprob
FROM t LEFT JOIN vocab v ON v.run_id = t.run_id AND v.token_id = t.token_id;

-- One row per scored rollout: prompt and response (text and token ids), the verifier's verdict, and the planning
-- annotation (NULL until the iteration's annotate stage commits). `hicra export` writes this view.
CREATE OR REPLACE VIEW scored_rollouts AS
SELECT r.run_id, r.iteration, r.rollout_id, r.prompt_id, r.group_index, r.sample_index, r.policy_iteration, r.seed,
       r.prompt, r.reference, r.response, s.reward, s.correct, s.status, s.extracted, r.finish_reason,
       r.response_length, p.num_planning_tokens, p.num_planning_tokens / nullif(len(p.planning_mask), 0) AS planning_share,
       r.prompt_token_ids, r.response_token_ids, r.sampler_logprobs, p.planning_mask
FROM rollouts r
JOIN scores s USING (run_id, iteration, rollout_id)
LEFT JOIN planning p USING (run_id, iteration, rollout_id);

-- One row per (run, iteration): what a researcher looks at first.
CREATE OR REPLACE VIEW iteration_summary AS
WITH r AS (
    SELECT run_id, iteration, count(*) AS rollouts, count(DISTINCT group_index) AS groups,
           avg(response_length) AS mean_response_length,
           avg(CASE WHEN finish_reason = 'length' THEN 1.0 ELSE 0.0 END) AS truncated_share
    FROM rollouts GROUP BY ALL
), s AS (
    SELECT r.run_id, r.iteration, avg(s.reward) AS reward, avg(s.correct::DOUBLE) AS accuracy,
           avg(CASE WHEN s.status <> 'ok' THEN 1.0 ELSE 0.0 END) AS not_ok_share,
           count(*) FILTER (WHERE s.status = 'ok') AS status_ok,
           count(*) FILTER (WHERE s.status = 'no_answer') AS status_no_answer,
           count(*) FILTER (WHERE s.status = 'parse_error') AS status_parse_error,
           count(*) FILTER (WHERE s.status = 'timeout') AS status_timeout,
           count(*) FILTER (WHERE s.status = 'error') AS status_error
    FROM scores s JOIN rollouts r USING (run_id, iteration, rollout_id) GROUP BY ALL
), g AS (
    SELECT run_id, iteration, avg(any_correct::DOUBLE) AS pass_at_group,
           avg(CASE WHEN min_reward = max_reward THEN 1.0 ELSE 0.0 END) AS zero_adv_group_share
    FROM (
        SELECT r.run_id, r.iteration, r.group_index, bool_or(s.correct) AS any_correct,
               min(s.reward) AS min_reward, max(s.reward) AS max_reward
        FROM scores s JOIN rollouts r USING (run_id, iteration, rollout_id) GROUP BY ALL
    ) GROUP BY ALL
), p AS (
    SELECT run_id, iteration, sum(num_planning_tokens) / nullif(sum(len(planning_mask)), 0) AS planning_token_share
    FROM planning GROUP BY ALL
), m AS (
    SELECT run_id, iteration,
           any_value(value) FILTER (WHERE name = 'entropy_planning') AS entropy_planning,
           any_value(value) FILTER (WHERE name = 'entropy_execution') AS entropy_execution,
           any_value(value) FILTER (WHERE name = 'nll_planning') AS nll_planning,
           any_value(value) FILTER (WHERE name = 'nll_execution') AS nll_execution,
           any_value(value) FILTER (WHERE name = 'semantic_entropy') AS semantic_entropy,
           any_value(value) FILTER (WHERE name = 'conditional_entropy') AS conditional_entropy,
           any_value(value) FILTER (WHERE name = 'planning_in_top_entropy') AS planning_in_top_entropy,
           any_value(value) FILTER (WHERE name = 'top_entropy_in_planning') AS top_entropy_in_planning,
           any_value(value) FILTER (WHERE name = 'dropped_groups') AS dropped_groups
    FROM metrics WHERE stage NOT LIKE 'eval-%' GROUP BY ALL  -- training stages; an evaluation's are in eval_summary
), m0 AS (  -- each run's first iteration with perplexities: the denominator of relative perplexity
    SELECT run_id, arg_min(nll_planning, iteration) AS nll_planning0, arg_min(nll_execution, iteration) AS nll_execution0
    FROM m WHERE nll_planning IS NOT NULL GROUP BY ALL
), t AS (
    SELECT run_id, iteration, avg(loss) AS loss, avg(clip_fraction) AS clip_fraction, avg(approx_kl) AS approx_kl,
           avg(entropy) AS entropy, avg(grad_norm) AS grad_norm, count(*) AS optimizer_steps
    FROM train_steps GROUP BY ALL
)
SELECT r.run_id, r.iteration, r.rollouts, r.groups, s.reward, s.accuracy, g.pass_at_group, r.mean_response_length,
       r.truncated_share, p.planning_token_share, g.zero_adv_group_share, m.dropped_groups,
       s.not_ok_share, s.status_ok, s.status_no_answer, s.status_parse_error, s.status_timeout, s.status_error,
       m.entropy_planning, m.entropy_execution,
       exp(m.nll_planning - m0.nll_planning0) AS relative_perplexity_planning,
       exp(m.nll_execution - m0.nll_execution0) AS relative_perplexity_execution,
       m.semantic_entropy, m.conditional_entropy, m.planning_in_top_entropy, m.top_entropy_in_planning,
       t.loss, t.clip_fraction, t.approx_kl, t.entropy, t.grad_norm, t.optimizer_steps
FROM r
LEFT JOIN s USING (run_id, iteration)
LEFT JOIN g USING (run_id, iteration)
LEFT JOIN p USING (run_id, iteration)
LEFT JOIN m USING (run_id, iteration)
LEFT JOIN m0 USING (run_id)
LEFT JOIN t USING (run_id, iteration)
ORDER BY r.run_id, r.iteration;

-- Benchmark evaluation (hicra-eval): one row per sampled answer; iteration -1 is a model folder outside any run.
CREATE OR REPLACE VIEW eval_results AS SELECT * FROM _eval_results;

-- Unbiased pass@k (Chen et al. 2021) per (checkpoint, suite, protocol) for k = 1, 2, 4, ... and k = the samples per
-- problem: the mean over problems of 1 - C(n-c, k) / C(n, k) = 1 - prod_{i<k} (n-c-i) / (n-i), with n samples and c
-- correct ones (a factor is 0 once n-c < k, so the product needs no special case).
CREATE OR REPLACE VIEW eval_pass_at_k AS
WITH p AS (
    SELECT run_id, iteration, checkpoint_id, suite, protocol_hash, problem_id,
           count(*) AS n, count(*) FILTER (WHERE reward > 0) AS c
    FROM eval_results GROUP BY ALL
), m AS (
    SELECT run_id, iteration, checkpoint_id, suite, protocol_hash, min(n) AS n FROM p GROUP BY ALL
), k AS (
    SELECT run_id, iteration, checkpoint_id, suite, protocol_hash, CAST(2 ** e AS BIGINT) AS k
    FROM (SELECT *, unnest(range(CAST(floor(log2(n)) AS BIGINT) + 1)) AS e FROM m)
    UNION SELECT run_id, iteration, checkpoint_id, suite, protocol_hash, n AS k FROM m
), terms AS (
    SELECT p.*, k.k, unnest(range(k.k)) AS i
    FROM p JOIN k USING (run_id, iteration, checkpoint_id, suite, protocol_hash)
), per_problem AS (
    SELECT run_id, iteration, checkpoint_id, suite, protocol_hash, problem_id, k,
           1.0 - product((n - c - i) / (n - i)) AS pass_at_k
    FROM terms GROUP BY ALL
)
SELECT run_id, iteration, checkpoint_id, suite, protocol_hash, k, avg(pass_at_k) AS pass_at_k
FROM per_problem GROUP BY ALL
ORDER BY run_id, iteration, suite, protocol_hash, k;

-- One row per (run, checkpoint, suite, protocol): avg@k (the paper's Pass@1: the mean reward over all k samples of
-- every problem), pass@k at k = the samples per problem (unbiased estimator), mean response length in tokens, and the
-- semantic entropy of the answers' Strategic Grams (committed by the evaluation as a metric of its own stage).
CREATE OR REPLACE VIEW eval_summary AS
WITH s AS (
    SELECT run_id, iteration, checkpoint_id, suite, protocol_hash, count(DISTINCT problem_id) AS problems,
           CAST(count(*) / count(DISTINCT problem_id) AS BIGINT) AS k, avg(reward) AS avg_at_k,
           avg(response_length) AS mean_response_length,
           avg(CASE WHEN status <> 'ok' THEN 1.0 ELSE 0.0 END) AS not_ok_share,
           avg(CASE WHEN finish_reason = 'length' THEN 1.0 ELSE 0.0 END) AS truncated_share
    FROM eval_results GROUP BY ALL
)
SELECT s.run_id, s.iteration, s.checkpoint_id, s.suite, s.protocol_hash, s.problems, s.k, s.avg_at_k, p.pass_at_k,
       s.mean_response_length, s.not_ok_share, s.truncated_share, e.value AS semantic_entropy
FROM s JOIN eval_pass_at_k p USING (run_id, iteration, checkpoint_id, suite, protocol_hash, k)
LEFT JOIN metrics e
    ON e.run_id = s.run_id AND e.iteration = s.iteration AND e.name = 'semantic_entropy'
   AND e.stage = 'eval-' || s.suite || '-' || s.protocol_hash
ORDER BY s.run_id, s.iteration, s.suite, s.protocol_hash;

-- The LLM judge's error type of each failed rollout (`hicra judge`), and per (run, iteration, judge) the paper's
-- planning errors vs the others (knowledge, calculation, other); answers naming no category are counted apart.
CREATE OR REPLACE VIEW judgments AS SELECT * FROM _judgments;
CREATE OR REPLACE VIEW error_types AS
SELECT run_id, iteration, judge_id, any_value(model) AS model, any_value(prompt_version) AS prompt_version,
       count(*) AS judged, count(*) FILTER (WHERE is_planning) AS planning_errors,
       count(*) FILTER (WHERE NOT is_planning AND category <> 'unparseable') AS other_errors,
       count(*) FILTER (WHERE category = 'unparseable') AS unparseable, max(judged_at) AS judged_at
FROM judgments GROUP BY run_id, iteration, judge_id
ORDER BY run_id, iteration, judge_id;
