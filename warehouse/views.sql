-- Views of the rollout warehouse. `warehouse.catalog` defines one `_<table>` relation per table first (the committed
-- Parquet files only), then runs this file. Every row carries run_id and iteration; rows join on rollout_id.

CREATE OR REPLACE VIEW rollouts AS SELECT * FROM _rollouts;
CREATE OR REPLACE VIEW scores AS SELECT * FROM _scores;
CREATE OR REPLACE VIEW planning AS SELECT * FROM _planning;
CREATE OR REPLACE VIEW advantages AS SELECT * FROM _advantages;
CREATE OR REPLACE VIEW train_steps AS SELECT * FROM _train_steps;
CREATE OR REPLACE VIEW checkpoints AS SELECT * FROM _checkpoints;
CREATE OR REPLACE VIEW commits AS SELECT * FROM _commits;

-- One row per (run, iteration): what a researcher looks at first.
CREATE OR REPLACE VIEW iteration_summary AS
WITH r AS (
    SELECT run_id, iteration, count(*) AS rollouts, count(DISTINCT group_index) AS groups,
           avg(response_length) AS mean_response_length,
           avg(CASE WHEN finish_reason = 'length' THEN 1.0 ELSE 0.0 END) AS truncated_share
    FROM rollouts GROUP BY ALL
), s AS (
    SELECT r.run_id, r.iteration, avg(s.reward) AS reward, avg(s.correct::DOUBLE) AS accuracy,
           avg(CASE WHEN s.status <> 'ok' THEN 1.0 ELSE 0.0 END) AS not_ok_share
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
), t AS (
    SELECT run_id, iteration, avg(loss) AS loss, avg(clip_fraction) AS clip_fraction, avg(approx_kl) AS approx_kl,
           avg(entropy) AS entropy, avg(grad_norm) AS grad_norm, count(*) AS optimizer_steps
    FROM train_steps GROUP BY ALL
)
SELECT r.run_id, r.iteration, r.rollouts, r.groups, s.reward, s.accuracy, g.pass_at_group, r.mean_response_length,
       r.truncated_share, p.planning_token_share, g.zero_adv_group_share, s.not_ok_share,
       t.loss, t.clip_fraction, t.approx_kl, t.entropy, t.grad_norm, t.optimizer_steps
FROM r
LEFT JOIN s USING (run_id, iteration)
LEFT JOIN g USING (run_id, iteration)
LEFT JOIN p USING (run_id, iteration)
LEFT JOIN t USING (run_id, iteration)
ORDER BY r.run_id, r.iteration;
