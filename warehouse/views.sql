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
    FROM metrics GROUP BY ALL
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
