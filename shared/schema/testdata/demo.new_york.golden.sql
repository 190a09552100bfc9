CREATE DATABASE IF NOT EXISTS `lambda`;

CREATE TABLE IF NOT EXISTS `lambda`.`speed_flushes`
(
    `dataset` String,
    `topic` String,
    `partition` Int32,
    `first_offset` Int64,
    `last_offset` Int64,
    `high_watermark` Int64,
    `raw_rows` UInt64,
    `rejected_rows` UInt64,
    `duplicate_rows` UInt64,
    `late_rows` UInt64,
    `max_event_time` DateTime('UTC'),
    `consumer` String,
    `flushed_at` DateTime('UTC') DEFAULT now(),
    `min_event_time` DateTime('UTC')
)
ENGINE = MergeTree PARTITION BY toYYYYMM(flushed_at) ORDER BY (`dataset`, `partition`, `flushed_at`);

CREATE TABLE IF NOT EXISTS `lambda`.`batch_runs`
(
    `dataset` String,
    `day` Date,
    `run_id` String,
    `status` String,
    `at` DateTime('UTC'),
    `at_us` UInt64,
    `started_at` DateTime('UTC'),
    `finished_at` DateTime('UTC'),
    `rows_raw` UInt64,
    `rows_dedup` UInt64,
    `rows_out` UInt64,
    `error` String,
    `host` String,
    `rows_hourly` UInt64,
    `rows_speed` UInt64
)
ENGINE = MergeTree PARTITION BY toYYYYMM(day) ORDER BY (`dataset`, `day`, `run_id`, `at_us`);

CREATE TABLE IF NOT EXISTS `lambda`.`batch_watermarks`
(
    `dataset` String,
    `watermark` Date,
    `run_id` String,
    `at` DateTime('UTC'),
    `at_us` UInt64
)
ENGINE = MergeTree PARTITION BY toYYYYMM(at) ORDER BY (`dataset`, `at_us`);

CREATE TABLE IF NOT EXISTS `lambda`.`speed_rollups`
(
    `dataset` String,
    `day` Date,
    `hour_to` DateTime('UTC'),
    `snapshot` DateTime('UTC'),
    `sets` Array(String),
    `rows` UInt64,
    `at_us` UInt64,
    `layout` String
)
ENGINE = MergeTree PARTITION BY toYYYYMM(day) ORDER BY (`dataset`, `day`, `at_us`);

CREATE TABLE IF NOT EXISTS `lambda`.`rest_rollups`
(
    `dataset` String,
    `day` Date,
    `run_id` String,
    `rows` UInt64,
    `layout` String,
    `at_us` UInt64
)
ENGINE = MergeTree PARTITION BY toYYYYMM(day) ORDER BY (`dataset`, `day`, `at_us`);

CREATE TABLE IF NOT EXISTS `lambda`.`schema_objects`
(
    `object` String,
    `statement_hash` String,
    `at` DateTime('UTC') DEFAULT now()
)
ENGINE = MergeTree ORDER BY (object, at);

CREATE TABLE IF NOT EXISTS `lambda`.`events_raw`
(
    `id` String,
    `time` DateTime('UTC'),
    `event` String,
    `country` String,
    `device` String,
    `user_id` String,
    `value` Nullable(Float64),
    `_topic` String,
    `_partition` Int32,
    `_offset` Int64,
    `_late` UInt8,
    `_ingested_at` DateTime('UTC') DEFAULT now()
)
ENGINE = MergeTree PARTITION BY toYYYYMMDD(time, 'America/New_York') ORDER BY (`time`, `id`);

CREATE TABLE IF NOT EXISTS `lambda`.`events_raw_days`
(
    `day` Date,
    `rows` UInt64
)
ENGINE = SummingMergeTree PARTITION BY toYYYYMMDD(day) ORDER BY (day);

CREATE MATERIALIZED VIEW `lambda`.`events_raw_days_mv` TO `lambda`.`events_raw_days` AS
SELECT toDate(toDateTime(time), 'America/New_York') AS day, count() AS rows FROM `lambda`.`events_raw` GROUP BY day;

CREATE TABLE IF NOT EXISTS `lambda`.`events_speed`
(
    `minute` DateTime('UTC'),
    `event` String,
    `country` String,
    `device` String,
    `events` AggregateFunction(count),
    `users` AggregateFunction(uniq, String),
    `revenue` AggregateFunction(sum, Float64),
    `value_p95` AggregateFunction(quantile(0.95), Float64),
    `_n_value` AggregateFunction(sum, UInt64)
)
ENGINE = AggregatingMergeTree PARTITION BY toYYYYMMDD(minute, 'America/New_York') ORDER BY (`minute`, `event`, `country`, `device`) SETTINGS index_granularity = 1024;

CREATE MATERIALIZED VIEW `lambda`.`events_speed_mv` TO `lambda`.`events_speed` AS
SELECT
    toStartOfMinute(time) AS minute,
    `event`,
    `country`,
    `device`,
    countState() AS `events`,
    uniqStateIf(toString(`user_id`), toString(`user_id`) != '') AS `users`,
    sumStateIf(toFloat64(assumeNotNull(`value`)), isNotNull(`value`)) AS `revenue`,
    quantileStateIf(0.95)(toFloat64(assumeNotNull(`value`)), isNotNull(`value`)) AS `value_p95`,
    sumState(toUInt64(isNotNull(`value`))) AS `_n_value`
FROM `lambda`.`events_raw`
WHERE _late = 0
GROUP BY minute, `event`, `country`, `device`;

CREATE TABLE IF NOT EXISTS `lambda`.`events_daily`
(
    `day` Date,
    `grouping` String,
    `event` String,
    `country` String,
    `device` String,
    `events` UInt64,
    `users` UInt64,
    `revenue` Nullable(Float64),
    `value_p95` Nullable(Float64),
    `users_state` AggregateFunction(uniq, String),
    `value_p95_state` AggregateFunction(quantile(0.95), Float64),
    `run_id` String
)
ENGINE = MergeTree PARTITION BY toYYYYMMDD(day) ORDER BY (`grouping`, `day`, `event`, `country`, `device`) SETTINGS index_granularity = 16;

CREATE TABLE IF NOT EXISTS `lambda`.`events_hourly`
(
    `hour` DateTime('UTC'),
    `grouping` String,
    `event` String,
    `country` String,
    `device` String,
    `events` UInt64,
    `users` UInt64,
    `revenue` Nullable(Float64),
    `value_p95` Nullable(Float64),
    `users_state` AggregateFunction(uniq, String),
    `value_p95_state` AggregateFunction(quantile(0.95), Float64),
    `run_id` String
)
ENGINE = MergeTree PARTITION BY toYYYYMMDD(hour, 'America/New_York') ORDER BY (`grouping`, `hour`, `event`, `country`, `device`) SETTINGS index_granularity = 16;

CREATE TABLE IF NOT EXISTS `lambda`.`events_speed_hourly`
(
    `hour` DateTime('UTC'),
    `grouping` String,
    `prefix` UInt8,
    `event` String,
    `country` String,
    `device` String,
    `events` AggregateFunction(count),
    `users` AggregateFunction(uniq, String),
    `revenue` AggregateFunction(sum, Float64),
    `value_p95` AggregateFunction(quantile(0.95), Float64),
    `_n_value` AggregateFunction(sum, UInt64),
    `_v_events` UInt64 DEFAULT toUInt64(finalizeAggregation(`events`)),
    `_v_users` UInt64 DEFAULT toUInt64(finalizeAggregation(`users`)),
    `_v_revenue` Nullable(Float64) DEFAULT if(finalizeAggregation(`_n_value`) = 0, NULL, toNullable(toFloat64(finalizeAggregation(`revenue`)))),
    `_v_value_p95` Nullable(Float64) DEFAULT if(isNaN(toFloat64(finalizeAggregation(`value_p95`))), NULL, toNullable(toFloat64(finalizeAggregation(`value_p95`))))
)
ENGINE = MergeTree PARTITION BY toYYYYMMDD(hour, 'America/New_York') ORDER BY (`grouping`, `prefix`, `hour`, `event`, `country`, `device`) SETTINGS index_granularity = 4;

CREATE TABLE IF NOT EXISTS `lambda`.`events_hourly_rest`
(
    `hour` DateTime('UTC'),
    `grouping` String,
    `event` String,
    `country` String,
    `device` String,
    `events` UInt64,
    `users_state` AggregateFunction(uniq, String),
    `revenue` Nullable(Float64),
    `value_p95_state` AggregateFunction(quantile(0.95), Float64),
    `run_id` String
)
ENGINE = MergeTree PARTITION BY toYYYYMMDD(hour, 'America/New_York') ORDER BY (`grouping`, `hour`, `event`, `country`, `device`) SETTINGS index_granularity = 4;

CREATE TABLE IF NOT EXISTS `lambda`.`events_rejects`
(
    `payload` String,
    `reason` String,
    `detail` String,
    `_topic` String,
    `_partition` Int32,
    `_offset` Int64,
    `_ingested_at` DateTime('UTC') DEFAULT now()
)
ENGINE = MergeTree PARTITION BY toYYYYMM(_ingested_at) ORDER BY (`_ingested_at`, `_partition`, `_offset`);

CREATE TABLE IF NOT EXISTS `lambda`.`events_drift`
(
    `day` Date,
    `metric` String,
    `speed_value` Nullable(Float64),
    `exact_value` Nullable(Float64),
    `abs_error` Nullable(Float64),
    `rel_error` Nullable(Float64),
    `run_id` String,
    `at` DateTime('UTC') DEFAULT now()
)
ENGINE = MergeTree PARTITION BY toYYYYMM(day) ORDER BY (`day`, `metric`, `at`);

CREATE VIEW `lambda`.`events_lambda` AS
SELECT
    day,
    grouping,
    `event`,
    `country`,
    `device`,
    toUInt64(`events`) AS `events`,
    toUInt64(`users`) AS `users`,
    toNullable(toFloat64(`revenue`)) AS `revenue`,
    if(isNaN(toFloat64(`value_p95`)), NULL, toNullable(toFloat64(`value_p95`))) AS `value_p95`,
    toFloat64(toNullable(toFloat64(`revenue`))) / nullIf(toFloat64(toUInt64(`events`)), 0) AS `revenue_per_event`,
    'batch' AS source,
    toUInt8((day, run_id) IN (SELECT day, run_id FROM (SELECT day, sum(r_raw) AS raw_rows, max(r_has) AS has_run, max(r_run) AS run_id, max(r_read) AS rows_read, max(r_out) AS rows_out,
    max(r_hourly) AS rows_hourly, max(r_speed) AS rows_speed,
    toUInt8(has_run = 1 AND raw_rows > 0 AND raw_rows != rows_read) AS dirty,
    toUInt8(has_run = 0 AND raw_rows > 0) AS unrun
FROM
(
    SELECT day, toUInt64(sum(rows)) AS r_raw, toUInt8(0) AS r_has, '' AS r_run, toUInt64(0) AS r_read, toUInt64(0) AS r_out,
        toUInt64(0) AS r_hourly, toUInt64(0) AS r_speed
    FROM `lambda`.`events_raw_days` GROUP BY day
    UNION ALL
    SELECT day, toUInt64(0), toUInt8(1), s_run, toUInt64(s_read), toUInt64(s_out), toUInt64(s_hourly), toUInt64(s_speed)
    FROM (SELECT day, argMax(run_id, at_us) AS s_run, argMax(rows_raw, at_us) AS s_read, argMax(rows_out, at_us) AS s_out,
    argMax(rows_hourly, at_us) AS s_hourly, argMax(rows_speed, at_us) AS s_speed
FROM `lambda`.`batch_runs` WHERE dataset = 'events' AND status = 'succeeded' GROUP BY day)
)
GROUP BY day) WHERE has_run = 1 AND dirty = 0)) AS exact
FROM `lambda`.`events_daily`
WHERE day <= (SELECT argMax(watermark, at_us) FROM `lambda`.`batch_watermarks` WHERE dataset = 'events')
UNION ALL
SELECT
    toDate(minute, 'America/New_York') AS day,
    arrayStringConcat(arrayFilter(x -> x != '', gd), ',') AS grouping,
    if(has(gd, 'event'), `d_event`, '') AS `event`,
    if(has(gd, 'country'), `d_country`, '') AS `country`,
    if(has(gd, 'device'), `d_device`, '') AS `device`,
    toUInt64(countMerge(`s_events`)) AS `events`,
    toUInt64(uniqMerge(`s_users`)) AS `users`,
    if(sumMerge(`p_value`) = 0, NULL, toNullable(toFloat64(sumMerge(`s_revenue`)))) AS `revenue`,
    if(isNaN(toFloat64(quantileMerge(0.95)(`s_value_p95`))), NULL, toNullable(toFloat64(quantileMerge(0.95)(`s_value_p95`)))) AS `value_p95`,
    toFloat64(if(sumMerge(`p_value`) = 0, NULL, toNullable(toFloat64(sumMerge(`s_revenue`))))) / nullIf(toFloat64(toUInt64(countMerge(`s_events`))), 0) AS `revenue_per_event`,
    'speed' AS source,
    materialize(toUInt8(0)) AS exact
FROM
(
    SELECT
        minute,
        `event` AS `d_event`,
        `country` AS `d_country`,
        `device` AS `d_device`,
        `events` AS `s_events`,
        `users` AS `s_users`,
        `revenue` AS `s_revenue`,
        `value_p95` AS `s_value_p95`,
        `_n_value` AS `p_value`
    FROM `lambda`.`events_speed`
    WHERE toDate(minute, 'America/New_York') > (SELECT argMax(watermark, at_us) FROM `lambda`.`batch_watermarks` WHERE dataset = 'events')
)
ARRAY JOIN [[''], ['event'], ['country'], ['device'], ['event', 'country', 'device']] AS gd
GROUP BY day, grouping, `event`, `country`, `device`;

CREATE VIEW `lambda`.`events_lambda_hourly` AS
SELECT
    hour,
    grouping,
    `event`,
    `country`,
    `device`,
    toUInt64(`events`) AS `events`,
    toUInt64(`users`) AS `users`,
    toNullable(toFloat64(`revenue`)) AS `revenue`,
    if(isNaN(toFloat64(`value_p95`)), NULL, toNullable(toFloat64(`value_p95`))) AS `value_p95`,
    toFloat64(toNullable(toFloat64(`revenue`))) / nullIf(toFloat64(toUInt64(`events`)), 0) AS `revenue_per_event`,
    'batch' AS source,
    toUInt8((toDate(hour, 'America/New_York'), run_id) IN (SELECT day, run_id FROM (SELECT day, sum(r_raw) AS raw_rows, max(r_has) AS has_run, max(r_run) AS run_id, max(r_read) AS rows_read, max(r_out) AS rows_out,
    max(r_hourly) AS rows_hourly, max(r_speed) AS rows_speed,
    toUInt8(has_run = 1 AND raw_rows > 0 AND raw_rows != rows_read) AS dirty,
    toUInt8(has_run = 0 AND raw_rows > 0) AS unrun
FROM
(
    SELECT day, toUInt64(sum(rows)) AS r_raw, toUInt8(0) AS r_has, '' AS r_run, toUInt64(0) AS r_read, toUInt64(0) AS r_out,
        toUInt64(0) AS r_hourly, toUInt64(0) AS r_speed
    FROM `lambda`.`events_raw_days` GROUP BY day
    UNION ALL
    SELECT day, toUInt64(0), toUInt8(1), s_run, toUInt64(s_read), toUInt64(s_out), toUInt64(s_hourly), toUInt64(s_speed)
    FROM (SELECT day, argMax(run_id, at_us) AS s_run, argMax(rows_raw, at_us) AS s_read, argMax(rows_out, at_us) AS s_out,
    argMax(rows_hourly, at_us) AS s_hourly, argMax(rows_speed, at_us) AS s_speed
FROM `lambda`.`batch_runs` WHERE dataset = 'events' AND status = 'succeeded' GROUP BY day)
)
GROUP BY day) WHERE has_run = 1 AND dirty = 0)) AS exact
FROM `lambda`.`events_hourly`
WHERE toDate(hour, 'America/New_York') <= (SELECT argMax(watermark, at_us) FROM `lambda`.`batch_watermarks` WHERE dataset = 'events')
UNION ALL
SELECT
    toDateTime(toStartOfHour(minute, 'America/New_York'), 'UTC') AS hour,
    arrayStringConcat(arrayFilter(x -> x != '', gd), ',') AS grouping,
    if(has(gd, 'event'), `d_event`, '') AS `event`,
    if(has(gd, 'country'), `d_country`, '') AS `country`,
    if(has(gd, 'device'), `d_device`, '') AS `device`,
    toUInt64(countMerge(`s_events`)) AS `events`,
    toUInt64(uniqMerge(`s_users`)) AS `users`,
    if(sumMerge(`p_value`) = 0, NULL, toNullable(toFloat64(sumMerge(`s_revenue`)))) AS `revenue`,
    if(isNaN(toFloat64(quantileMerge(0.95)(`s_value_p95`))), NULL, toNullable(toFloat64(quantileMerge(0.95)(`s_value_p95`)))) AS `value_p95`,
    toFloat64(if(sumMerge(`p_value`) = 0, NULL, toNullable(toFloat64(sumMerge(`s_revenue`))))) / nullIf(toFloat64(toUInt64(countMerge(`s_events`))), 0) AS `revenue_per_event`,
    'speed' AS source,
    materialize(toUInt8(0)) AS exact
FROM
(
    SELECT
        minute,
        `event` AS `d_event`,
        `country` AS `d_country`,
        `device` AS `d_device`,
        `events` AS `s_events`,
        `users` AS `s_users`,
        `revenue` AS `s_revenue`,
        `value_p95` AS `s_value_p95`,
        `_n_value` AS `p_value`
    FROM `lambda`.`events_speed`
    WHERE toDate(minute, 'America/New_York') > (SELECT argMax(watermark, at_us) FROM `lambda`.`batch_watermarks` WHERE dataset = 'events')
)
ARRAY JOIN [[''], ['event'], ['country'], ['device'], ['event', 'country', 'device']] AS gd
GROUP BY hour, grouping, `event`, `country`, `device`;

CREATE VIEW `lambda`.`events_lambda_total` AS
SELECT
    day,
    toUInt64(`events`) AS `events`,
    toUInt64(`users`) AS `users`,
    toNullable(toFloat64(`revenue`)) AS `revenue`,
    if(isNaN(toFloat64(`value_p95`)), NULL, toNullable(toFloat64(`value_p95`))) AS `value_p95`,
    toFloat64(toNullable(toFloat64(`revenue`))) / nullIf(toFloat64(toUInt64(`events`)), 0) AS `revenue_per_event`,
    'batch' AS source,
    toUInt8((day, run_id) IN (SELECT day, run_id FROM (SELECT day, sum(r_raw) AS raw_rows, max(r_has) AS has_run, max(r_run) AS run_id, max(r_read) AS rows_read, max(r_out) AS rows_out,
    max(r_hourly) AS rows_hourly, max(r_speed) AS rows_speed,
    toUInt8(has_run = 1 AND raw_rows > 0 AND raw_rows != rows_read) AS dirty,
    toUInt8(has_run = 0 AND raw_rows > 0) AS unrun
FROM
(
    SELECT day, toUInt64(sum(rows)) AS r_raw, toUInt8(0) AS r_has, '' AS r_run, toUInt64(0) AS r_read, toUInt64(0) AS r_out,
        toUInt64(0) AS r_hourly, toUInt64(0) AS r_speed
    FROM `lambda`.`events_raw_days` GROUP BY day
    UNION ALL
    SELECT day, toUInt64(0), toUInt8(1), s_run, toUInt64(s_read), toUInt64(s_out), toUInt64(s_hourly), toUInt64(s_speed)
    FROM (SELECT day, argMax(run_id, at_us) AS s_run, argMax(rows_raw, at_us) AS s_read, argMax(rows_out, at_us) AS s_out,
    argMax(rows_hourly, at_us) AS s_hourly, argMax(rows_speed, at_us) AS s_speed
FROM `lambda`.`batch_runs` WHERE dataset = 'events' AND status = 'succeeded' GROUP BY day)
)
GROUP BY day) WHERE has_run = 1 AND dirty = 0)) AS exact
FROM `lambda`.`events_daily`
WHERE day <= (SELECT argMax(watermark, at_us) FROM `lambda`.`batch_watermarks` WHERE dataset = 'events') AND grouping = ''
UNION ALL
SELECT
    toDate(minute, 'America/New_York') AS day,
    toUInt64(countMerge(`s_events`)) AS `events`,
    toUInt64(uniqMerge(`s_users`)) AS `users`,
    if(sumMerge(`p_value`) = 0, NULL, toNullable(toFloat64(sumMerge(`s_revenue`)))) AS `revenue`,
    if(isNaN(toFloat64(quantileMerge(0.95)(`s_value_p95`))), NULL, toNullable(toFloat64(quantileMerge(0.95)(`s_value_p95`)))) AS `value_p95`,
    toFloat64(if(sumMerge(`p_value`) = 0, NULL, toNullable(toFloat64(sumMerge(`s_revenue`))))) / nullIf(toFloat64(toUInt64(countMerge(`s_events`))), 0) AS `revenue_per_event`,
    'speed' AS source,
    materialize(toUInt8(0)) AS exact
FROM
(
    SELECT
        minute,
        `events` AS `s_events`,
        `users` AS `s_users`,
        `revenue` AS `s_revenue`,
        `value_p95` AS `s_value_p95`,
        `_n_value` AS `p_value`
    FROM `lambda`.`events_speed`
    WHERE toDate(minute, 'America/New_York') > (SELECT argMax(watermark, at_us) FROM `lambda`.`batch_watermarks` WHERE dataset = 'events')
)
GROUP BY day;

CREATE VIEW `lambda`.`events_lambda_by_event` AS
SELECT
    day,
    `event`,
    toUInt64(`events`) AS `events`,
    toUInt64(`users`) AS `users`,
    toNullable(toFloat64(`revenue`)) AS `revenue`,
    if(isNaN(toFloat64(`value_p95`)), NULL, toNullable(toFloat64(`value_p95`))) AS `value_p95`,
    toFloat64(toNullable(toFloat64(`revenue`))) / nullIf(toFloat64(toUInt64(`events`)), 0) AS `revenue_per_event`,
    'batch' AS source,
    toUInt8((day, run_id) IN (SELECT day, run_id FROM (SELECT day, sum(r_raw) AS raw_rows, max(r_has) AS has_run, max(r_run) AS run_id, max(r_read) AS rows_read, max(r_out) AS rows_out,
    max(r_hourly) AS rows_hourly, max(r_speed) AS rows_speed,
    toUInt8(has_run = 1 AND raw_rows > 0 AND raw_rows != rows_read) AS dirty,
    toUInt8(has_run = 0 AND raw_rows > 0) AS unrun
FROM
(
    SELECT day, toUInt64(sum(rows)) AS r_raw, toUInt8(0) AS r_has, '' AS r_run, toUInt64(0) AS r_read, toUInt64(0) AS r_out,
        toUInt64(0) AS r_hourly, toUInt64(0) AS r_speed
    FROM `lambda`.`events_raw_days` GROUP BY day
    UNION ALL
    SELECT day, toUInt64(0), toUInt8(1), s_run, toUInt64(s_read), toUInt64(s_out), toUInt64(s_hourly), toUInt64(s_speed)
    FROM (SELECT day, argMax(run_id, at_us) AS s_run, argMax(rows_raw, at_us) AS s_read, argMax(rows_out, at_us) AS s_out,
    argMax(rows_hourly, at_us) AS s_hourly, argMax(rows_speed, at_us) AS s_speed
FROM `lambda`.`batch_runs` WHERE dataset = 'events' AND status = 'succeeded' GROUP BY day)
)
GROUP BY day) WHERE has_run = 1 AND dirty = 0)) AS exact
FROM `lambda`.`events_daily`
WHERE day <= (SELECT argMax(watermark, at_us) FROM `lambda`.`batch_watermarks` WHERE dataset = 'events') AND grouping = 'event'
UNION ALL
SELECT
    toDate(minute, 'America/New_York') AS day,
    `d_event` AS `event`,
    toUInt64(countMerge(`s_events`)) AS `events`,
    toUInt64(uniqMerge(`s_users`)) AS `users`,
    if(sumMerge(`p_value`) = 0, NULL, toNullable(toFloat64(sumMerge(`s_revenue`)))) AS `revenue`,
    if(isNaN(toFloat64(quantileMerge(0.95)(`s_value_p95`))), NULL, toNullable(toFloat64(quantileMerge(0.95)(`s_value_p95`)))) AS `value_p95`,
    toFloat64(if(sumMerge(`p_value`) = 0, NULL, toNullable(toFloat64(sumMerge(`s_revenue`))))) / nullIf(toFloat64(toUInt64(countMerge(`s_events`))), 0) AS `revenue_per_event`,
    'speed' AS source,
    materialize(toUInt8(0)) AS exact
FROM
(
    SELECT
        minute,
        `event` AS `d_event`,
        `events` AS `s_events`,
        `users` AS `s_users`,
        `revenue` AS `s_revenue`,
        `value_p95` AS `s_value_p95`,
        `_n_value` AS `p_value`
    FROM `lambda`.`events_speed`
    WHERE toDate(minute, 'America/New_York') > (SELECT argMax(watermark, at_us) FROM `lambda`.`batch_watermarks` WHERE dataset = 'events')
)
GROUP BY day, `event`;

CREATE VIEW `lambda`.`events_lambda_by_country` AS
SELECT
    day,
    `country`,
    toUInt64(`events`) AS `events`,
    toUInt64(`users`) AS `users`,
    toNullable(toFloat64(`revenue`)) AS `revenue`,
    if(isNaN(toFloat64(`value_p95`)), NULL, toNullable(toFloat64(`value_p95`))) AS `value_p95`,
    toFloat64(toNullable(toFloat64(`revenue`))) / nullIf(toFloat64(toUInt64(`events`)), 0) AS `revenue_per_event`,
    'batch' AS source,
    toUInt8((day, run_id) IN (SELECT day, run_id FROM (SELECT day, sum(r_raw) AS raw_rows, max(r_has) AS has_run, max(r_run) AS run_id, max(r_read) AS rows_read, max(r_out) AS rows_out,
    max(r_hourly) AS rows_hourly, max(r_speed) AS rows_speed,
    toUInt8(has_run = 1 AND raw_rows > 0 AND raw_rows != rows_read) AS dirty,
    toUInt8(has_run = 0 AND raw_rows > 0) AS unrun
FROM
(
    SELECT day, toUInt64(sum(rows)) AS r_raw, toUInt8(0) AS r_has, '' AS r_run, toUInt64(0) AS r_read, toUInt64(0) AS r_out,
        toUInt64(0) AS r_hourly, toUInt64(0) AS r_speed
    FROM `lambda`.`events_raw_days` GROUP BY day
    UNION ALL
    SELECT day, toUInt64(0), toUInt8(1), s_run, toUInt64(s_read), toUInt64(s_out), toUInt64(s_hourly), toUInt64(s_speed)
    FROM (SELECT day, argMax(run_id, at_us) AS s_run, argMax(rows_raw, at_us) AS s_read, argMax(rows_out, at_us) AS s_out,
    argMax(rows_hourly, at_us) AS s_hourly, argMax(rows_speed, at_us) AS s_speed
FROM `lambda`.`batch_runs` WHERE dataset = 'events' AND status = 'succeeded' GROUP BY day)
)
GROUP BY day) WHERE has_run = 1 AND dirty = 0)) AS exact
FROM `lambda`.`events_daily`
WHERE day <= (SELECT argMax(watermark, at_us) FROM `lambda`.`batch_watermarks` WHERE dataset = 'events') AND grouping = 'country'
UNION ALL
SELECT
    toDate(minute, 'America/New_York') AS day,
    `d_country` AS `country`,
    toUInt64(countMerge(`s_events`)) AS `events`,
    toUInt64(uniqMerge(`s_users`)) AS `users`,
    if(sumMerge(`p_value`) = 0, NULL, toNullable(toFloat64(sumMerge(`s_revenue`)))) AS `revenue`,
    if(isNaN(toFloat64(quantileMerge(0.95)(`s_value_p95`))), NULL, toNullable(toFloat64(quantileMerge(0.95)(`s_value_p95`)))) AS `value_p95`,
    toFloat64(if(sumMerge(`p_value`) = 0, NULL, toNullable(toFloat64(sumMerge(`s_revenue`))))) / nullIf(toFloat64(toUInt64(countMerge(`s_events`))), 0) AS `revenue_per_event`,
    'speed' AS source,
    materialize(toUInt8(0)) AS exact
FROM
(
    SELECT
        minute,
        `country` AS `d_country`,
        `events` AS `s_events`,
        `users` AS `s_users`,
        `revenue` AS `s_revenue`,
        `value_p95` AS `s_value_p95`,
        `_n_value` AS `p_value`
    FROM `lambda`.`events_speed`
    WHERE toDate(minute, 'America/New_York') > (SELECT argMax(watermark, at_us) FROM `lambda`.`batch_watermarks` WHERE dataset = 'events')
)
GROUP BY day, `country`;

CREATE VIEW `lambda`.`events_lambda_by_device` AS
SELECT
    day,
    `device`,
    toUInt64(`events`) AS `events`,
    toUInt64(`users`) AS `users`,
    toNullable(toFloat64(`revenue`)) AS `revenue`,
    if(isNaN(toFloat64(`value_p95`)), NULL, toNullable(toFloat64(`value_p95`))) AS `value_p95`,
    toFloat64(toNullable(toFloat64(`revenue`))) / nullIf(toFloat64(toUInt64(`events`)), 0) AS `revenue_per_event`,
    'batch' AS source,
    toUInt8((day, run_id) IN (SELECT day, run_id FROM (SELECT day, sum(r_raw) AS raw_rows, max(r_has) AS has_run, max(r_run) AS run_id, max(r_read) AS rows_read, max(r_out) AS rows_out,
    max(r_hourly) AS rows_hourly, max(r_speed) AS rows_speed,
    toUInt8(has_run = 1 AND raw_rows > 0 AND raw_rows != rows_read) AS dirty,
    toUInt8(has_run = 0 AND raw_rows > 0) AS unrun
FROM
(
    SELECT day, toUInt64(sum(rows)) AS r_raw, toUInt8(0) AS r_has, '' AS r_run, toUInt64(0) AS r_read, toUInt64(0) AS r_out,
        toUInt64(0) AS r_hourly, toUInt64(0) AS r_speed
    FROM `lambda`.`events_raw_days` GROUP BY day
    UNION ALL
    SELECT day, toUInt64(0), toUInt8(1), s_run, toUInt64(s_read), toUInt64(s_out), toUInt64(s_hourly), toUInt64(s_speed)
    FROM (SELECT day, argMax(run_id, at_us) AS s_run, argMax(rows_raw, at_us) AS s_read, argMax(rows_out, at_us) AS s_out,
    argMax(rows_hourly, at_us) AS s_hourly, argMax(rows_speed, at_us) AS s_speed
FROM `lambda`.`batch_runs` WHERE dataset = 'events' AND status = 'succeeded' GROUP BY day)
)
GROUP BY day) WHERE has_run = 1 AND dirty = 0)) AS exact
FROM `lambda`.`events_daily`
WHERE day <= (SELECT argMax(watermark, at_us) FROM `lambda`.`batch_watermarks` WHERE dataset = 'events') AND grouping = 'device'
UNION ALL
SELECT
    toDate(minute, 'America/New_York') AS day,
    `d_device` AS `device`,
    toUInt64(countMerge(`s_events`)) AS `events`,
    toUInt64(uniqMerge(`s_users`)) AS `users`,
    if(sumMerge(`p_value`) = 0, NULL, toNullable(toFloat64(sumMerge(`s_revenue`)))) AS `revenue`,
    if(isNaN(toFloat64(quantileMerge(0.95)(`s_value_p95`))), NULL, toNullable(toFloat64(quantileMerge(0.95)(`s_value_p95`)))) AS `value_p95`,
    toFloat64(if(sumMerge(`p_value`) = 0, NULL, toNullable(toFloat64(sumMerge(`s_revenue`))))) / nullIf(toFloat64(toUInt64(countMerge(`s_events`))), 0) AS `revenue_per_event`,
    'speed' AS source,
    materialize(toUInt8(0)) AS exact
FROM
(
    SELECT
        minute,
        `device` AS `d_device`,
        `events` AS `s_events`,
        `users` AS `s_users`,
        `revenue` AS `s_revenue`,
        `value_p95` AS `s_value_p95`,
        `_n_value` AS `p_value`
    FROM `lambda`.`events_speed`
    WHERE toDate(minute, 'America/New_York') > (SELECT argMax(watermark, at_us) FROM `lambda`.`batch_watermarks` WHERE dataset = 'events')
)
GROUP BY day, `device`;

CREATE VIEW `lambda`.`events_lambda_by_event_country_device` AS
SELECT
    day,
    `event`,
    `country`,
    `device`,
    toUInt64(`events`) AS `events`,
    toUInt64(`users`) AS `users`,
    toNullable(toFloat64(`revenue`)) AS `revenue`,
    if(isNaN(toFloat64(`value_p95`)), NULL, toNullable(toFloat64(`value_p95`))) AS `value_p95`,
    toFloat64(toNullable(toFloat64(`revenue`))) / nullIf(toFloat64(toUInt64(`events`)), 0) AS `revenue_per_event`,
    'batch' AS source,
    toUInt8((day, run_id) IN (SELECT day, run_id FROM (SELECT day, sum(r_raw) AS raw_rows, max(r_has) AS has_run, max(r_run) AS run_id, max(r_read) AS rows_read, max(r_out) AS rows_out,
    max(r_hourly) AS rows_hourly, max(r_speed) AS rows_speed,
    toUInt8(has_run = 1 AND raw_rows > 0 AND raw_rows != rows_read) AS dirty,
    toUInt8(has_run = 0 AND raw_rows > 0) AS unrun
FROM
(
    SELECT day, toUInt64(sum(rows)) AS r_raw, toUInt8(0) AS r_has, '' AS r_run, toUInt64(0) AS r_read, toUInt64(0) AS r_out,
        toUInt64(0) AS r_hourly, toUInt64(0) AS r_speed
    FROM `lambda`.`events_raw_days` GROUP BY day
    UNION ALL
    SELECT day, toUInt64(0), toUInt8(1), s_run, toUInt64(s_read), toUInt64(s_out), toUInt64(s_hourly), toUInt64(s_speed)
    FROM (SELECT day, argMax(run_id, at_us) AS s_run, argMax(rows_raw, at_us) AS s_read, argMax(rows_out, at_us) AS s_out,
    argMax(rows_hourly, at_us) AS s_hourly, argMax(rows_speed, at_us) AS s_speed
FROM `lambda`.`batch_runs` WHERE dataset = 'events' AND status = 'succeeded' GROUP BY day)
)
GROUP BY day) WHERE has_run = 1 AND dirty = 0)) AS exact
FROM `lambda`.`events_daily`
WHERE day <= (SELECT argMax(watermark, at_us) FROM `lambda`.`batch_watermarks` WHERE dataset = 'events') AND grouping = 'event,country,device'
UNION ALL
SELECT
    toDate(minute, 'America/New_York') AS day,
    `d_event` AS `event`,
    `d_country` AS `country`,
    `d_device` AS `device`,
    toUInt64(countMerge(`s_events`)) AS `events`,
    toUInt64(uniqMerge(`s_users`)) AS `users`,
    if(sumMerge(`p_value`) = 0, NULL, toNullable(toFloat64(sumMerge(`s_revenue`)))) AS `revenue`,
    if(isNaN(toFloat64(quantileMerge(0.95)(`s_value_p95`))), NULL, toNullable(toFloat64(quantileMerge(0.95)(`s_value_p95`)))) AS `value_p95`,
    toFloat64(if(sumMerge(`p_value`) = 0, NULL, toNullable(toFloat64(sumMerge(`s_revenue`))))) / nullIf(toFloat64(toUInt64(countMerge(`s_events`))), 0) AS `revenue_per_event`,
    'speed' AS source,
    materialize(toUInt8(0)) AS exact
FROM
(
    SELECT
        minute,
        `event` AS `d_event`,
        `country` AS `d_country`,
        `device` AS `d_device`,
        `events` AS `s_events`,
        `users` AS `s_users`,
        `revenue` AS `s_revenue`,
        `value_p95` AS `s_value_p95`,
        `_n_value` AS `p_value`
    FROM `lambda`.`events_speed`
    WHERE toDate(minute, 'America/New_York') > (SELECT argMax(watermark, at_us) FROM `lambda`.`batch_watermarks` WHERE dataset = 'events')
)
GROUP BY day, `event`, `country`, `device`;

CREATE VIEW `lambda`.`events_lambda_hourly_total` AS
SELECT
    hour,
    toUInt64(`events`) AS `events`,
    toUInt64(`users`) AS `users`,
    toNullable(toFloat64(`revenue`)) AS `revenue`,
    if(isNaN(toFloat64(`value_p95`)), NULL, toNullable(toFloat64(`value_p95`))) AS `value_p95`,
    toFloat64(toNullable(toFloat64(`revenue`))) / nullIf(toFloat64(toUInt64(`events`)), 0) AS `revenue_per_event`,
    'batch' AS source,
    toUInt8((toDate(hour, 'America/New_York'), run_id) IN (SELECT day, run_id FROM (SELECT day, sum(r_raw) AS raw_rows, max(r_has) AS has_run, max(r_run) AS run_id, max(r_read) AS rows_read, max(r_out) AS rows_out,
    max(r_hourly) AS rows_hourly, max(r_speed) AS rows_speed,
    toUInt8(has_run = 1 AND raw_rows > 0 AND raw_rows != rows_read) AS dirty,
    toUInt8(has_run = 0 AND raw_rows > 0) AS unrun
FROM
(
    SELECT day, toUInt64(sum(rows)) AS r_raw, toUInt8(0) AS r_has, '' AS r_run, toUInt64(0) AS r_read, toUInt64(0) AS r_out,
        toUInt64(0) AS r_hourly, toUInt64(0) AS r_speed
    FROM `lambda`.`events_raw_days` GROUP BY day
    UNION ALL
    SELECT day, toUInt64(0), toUInt8(1), s_run, toUInt64(s_read), toUInt64(s_out), toUInt64(s_hourly), toUInt64(s_speed)
    FROM (SELECT day, argMax(run_id, at_us) AS s_run, argMax(rows_raw, at_us) AS s_read, argMax(rows_out, at_us) AS s_out,
    argMax(rows_hourly, at_us) AS s_hourly, argMax(rows_speed, at_us) AS s_speed
FROM `lambda`.`batch_runs` WHERE dataset = 'events' AND status = 'succeeded' GROUP BY day)
)
GROUP BY day) WHERE has_run = 1 AND dirty = 0)) AS exact
FROM `lambda`.`events_hourly`
WHERE toDate(hour, 'America/New_York') <= (SELECT argMax(watermark, at_us) FROM `lambda`.`batch_watermarks` WHERE dataset = 'events') AND grouping = ''
UNION ALL
SELECT
    toDateTime(toStartOfHour(minute, 'America/New_York'), 'UTC') AS hour,
    toUInt64(countMerge(`s_events`)) AS `events`,
    toUInt64(uniqMerge(`s_users`)) AS `users`,
    if(sumMerge(`p_value`) = 0, NULL, toNullable(toFloat64(sumMerge(`s_revenue`)))) AS `revenue`,
    if(isNaN(toFloat64(quantileMerge(0.95)(`s_value_p95`))), NULL, toNullable(toFloat64(quantileMerge(0.95)(`s_value_p95`)))) AS `value_p95`,
    toFloat64(if(sumMerge(`p_value`) = 0, NULL, toNullable(toFloat64(sumMerge(`s_revenue`))))) / nullIf(toFloat64(toUInt64(countMerge(`s_events`))), 0) AS `revenue_per_event`,
    'speed' AS source,
    materialize(toUInt8(0)) AS exact
FROM
(
    SELECT
        minute,
        `events` AS `s_events`,
        `users` AS `s_users`,
        `revenue` AS `s_revenue`,
        `value_p95` AS `s_value_p95`,
        `_n_value` AS `p_value`
    FROM `lambda`.`events_speed`
    WHERE toDate(minute, 'America/New_York') > (SELECT argMax(watermark, at_us) FROM `lambda`.`batch_watermarks` WHERE dataset = 'events')
)
GROUP BY hour;

CREATE VIEW `lambda`.`events_lambda_hourly_by_event` AS
SELECT
    hour,
    `event`,
    toUInt64(`events`) AS `events`,
    toUInt64(`users`) AS `users`,
    toNullable(toFloat64(`revenue`)) AS `revenue`,
    if(isNaN(toFloat64(`value_p95`)), NULL, toNullable(toFloat64(`value_p95`))) AS `value_p95`,
    toFloat64(toNullable(toFloat64(`revenue`))) / nullIf(toFloat64(toUInt64(`events`)), 0) AS `revenue_per_event`,
    'batch' AS source,
    toUInt8((toDate(hour, 'America/New_York'), run_id) IN (SELECT day, run_id FROM (SELECT day, sum(r_raw) AS raw_rows, max(r_has) AS has_run, max(r_run) AS run_id, max(r_read) AS rows_read, max(r_out) AS rows_out,
    max(r_hourly) AS rows_hourly, max(r_speed) AS rows_speed,
    toUInt8(has_run = 1 AND raw_rows > 0 AND raw_rows != rows_read) AS dirty,
    toUInt8(has_run = 0 AND raw_rows > 0) AS unrun
FROM
(
    SELECT day, toUInt64(sum(rows)) AS r_raw, toUInt8(0) AS r_has, '' AS r_run, toUInt64(0) AS r_read, toUInt64(0) AS r_out,
        toUInt64(0) AS r_hourly, toUInt64(0) AS r_speed
    FROM `lambda`.`events_raw_days` GROUP BY day
    UNION ALL
    SELECT day, toUInt64(0), toUInt8(1), s_run, toUInt64(s_read), toUInt64(s_out), toUInt64(s_hourly), toUInt64(s_speed)
    FROM (SELECT day, argMax(run_id, at_us) AS s_run, argMax(rows_raw, at_us) AS s_read, argMax(rows_out, at_us) AS s_out,
    argMax(rows_hourly, at_us) AS s_hourly, argMax(rows_speed, at_us) AS s_speed
FROM `lambda`.`batch_runs` WHERE dataset = 'events' AND status = 'succeeded' GROUP BY day)
)
GROUP BY day) WHERE has_run = 1 AND dirty = 0)) AS exact
FROM `lambda`.`events_hourly`
WHERE toDate(hour, 'America/New_York') <= (SELECT argMax(watermark, at_us) FROM `lambda`.`batch_watermarks` WHERE dataset = 'events') AND grouping = 'event'
UNION ALL
SELECT
    toDateTime(toStartOfHour(minute, 'America/New_York'), 'UTC') AS hour,
    `d_event` AS `event`,
    toUInt64(countMerge(`s_events`)) AS `events`,
    toUInt64(uniqMerge(`s_users`)) AS `users`,
    if(sumMerge(`p_value`) = 0, NULL, toNullable(toFloat64(sumMerge(`s_revenue`)))) AS `revenue`,
    if(isNaN(toFloat64(quantileMerge(0.95)(`s_value_p95`))), NULL, toNullable(toFloat64(quantileMerge(0.95)(`s_value_p95`)))) AS `value_p95`,
    toFloat64(if(sumMerge(`p_value`) = 0, NULL, toNullable(toFloat64(sumMerge(`s_revenue`))))) / nullIf(toFloat64(toUInt64(countMerge(`s_events`))), 0) AS `revenue_per_event`,
    'speed' AS source,
    materialize(toUInt8(0)) AS exact
FROM
(
    SELECT
        minute,
        `event` AS `d_event`,
        `events` AS `s_events`,
        `users` AS `s_users`,
        `revenue` AS `s_revenue`,
        `value_p95` AS `s_value_p95`,
        `_n_value` AS `p_value`
    FROM `lambda`.`events_speed`
    WHERE toDate(minute, 'America/New_York') > (SELECT argMax(watermark, at_us) FROM `lambda`.`batch_watermarks` WHERE dataset = 'events')
)
GROUP BY hour, `event`;

CREATE VIEW `lambda`.`events_lambda_hourly_by_country` AS
SELECT
    hour,
    `country`,
    toUInt64(`events`) AS `events`,
    toUInt64(`users`) AS `users`,
    toNullable(toFloat64(`revenue`)) AS `revenue`,
    if(isNaN(toFloat64(`value_p95`)), NULL, toNullable(toFloat64(`value_p95`))) AS `value_p95`,
    toFloat64(toNullable(toFloat64(`revenue`))) / nullIf(toFloat64(toUInt64(`events`)), 0) AS `revenue_per_event`,
    'batch' AS source,
    toUInt8((toDate(hour, 'America/New_York'), run_id) IN (SELECT day, run_id FROM (SELECT day, sum(r_raw) AS raw_rows, max(r_has) AS has_run, max(r_run) AS run_id, max(r_read) AS rows_read, max(r_out) AS rows_out,
    max(r_hourly) AS rows_hourly, max(r_speed) AS rows_speed,
    toUInt8(has_run = 1 AND raw_rows > 0 AND raw_rows != rows_read) AS dirty,
    toUInt8(has_run = 0 AND raw_rows > 0) AS unrun
FROM
(
    SELECT day, toUInt64(sum(rows)) AS r_raw, toUInt8(0) AS r_has, '' AS r_run, toUInt64(0) AS r_read, toUInt64(0) AS r_out,
        toUInt64(0) AS r_hourly, toUInt64(0) AS r_speed
    FROM `lambda`.`events_raw_days` GROUP BY day
    UNION ALL
    SELECT day, toUInt64(0), toUInt8(1), s_run, toUInt64(s_read), toUInt64(s_out), toUInt64(s_hourly), toUInt64(s_speed)
    FROM (SELECT day, argMax(run_id, at_us) AS s_run, argMax(rows_raw, at_us) AS s_read, argMax(rows_out, at_us) AS s_out,
    argMax(rows_hourly, at_us) AS s_hourly, argMax(rows_speed, at_us) AS s_speed
FROM `lambda`.`batch_runs` WHERE dataset = 'events' AND status = 'succeeded' GROUP BY day)
)
GROUP BY day) WHERE has_run = 1 AND dirty = 0)) AS exact
FROM `lambda`.`events_hourly`
WHERE toDate(hour, 'America/New_York') <= (SELECT argMax(watermark, at_us) FROM `lambda`.`batch_watermarks` WHERE dataset = 'events') AND grouping = 'country'
UNION ALL
SELECT
    toDateTime(toStartOfHour(minute, 'America/New_York'), 'UTC') AS hour,
    `d_country` AS `country`,
    toUInt64(countMerge(`s_events`)) AS `events`,
    toUInt64(uniqMerge(`s_users`)) AS `users`,
    if(sumMerge(`p_value`) = 0, NULL, toNullable(toFloat64(sumMerge(`s_revenue`)))) AS `revenue`,
    if(isNaN(toFloat64(quantileMerge(0.95)(`s_value_p95`))), NULL, toNullable(toFloat64(quantileMerge(0.95)(`s_value_p95`)))) AS `value_p95`,
    toFloat64(if(sumMerge(`p_value`) = 0, NULL, toNullable(toFloat64(sumMerge(`s_revenue`))))) / nullIf(toFloat64(toUInt64(countMerge(`s_events`))), 0) AS `revenue_per_event`,
    'speed' AS source,
    materialize(toUInt8(0)) AS exact
FROM
(
    SELECT
        minute,
        `country` AS `d_country`,
        `events` AS `s_events`,
        `users` AS `s_users`,
        `revenue` AS `s_revenue`,
        `value_p95` AS `s_value_p95`,
        `_n_value` AS `p_value`
    FROM `lambda`.`events_speed`
    WHERE toDate(minute, 'America/New_York') > (SELECT argMax(watermark, at_us) FROM `lambda`.`batch_watermarks` WHERE dataset = 'events')
)
GROUP BY hour, `country`;

CREATE VIEW `lambda`.`events_lambda_hourly_by_device` AS
SELECT
    hour,
    `device`,
    toUInt64(`events`) AS `events`,
    toUInt64(`users`) AS `users`,
    toNullable(toFloat64(`revenue`)) AS `revenue`,
    if(isNaN(toFloat64(`value_p95`)), NULL, toNullable(toFloat64(`value_p95`))) AS `value_p95`,
    toFloat64(toNullable(toFloat64(`revenue`))) / nullIf(toFloat64(toUInt64(`events`)), 0) AS `revenue_per_event`,
    'batch' AS source,
    toUInt8((toDate(hour, 'America/New_York'), run_id) IN (SELECT day, run_id FROM (SELECT day, sum(r_raw) AS raw_rows, max(r_has) AS has_run, max(r_run) AS run_id, max(r_read) AS rows_read, max(r_out) AS rows_out,
    max(r_hourly) AS rows_hourly, max(r_speed) AS rows_speed,
    toUInt8(has_run = 1 AND raw_rows > 0 AND raw_rows != rows_read) AS dirty,
    toUInt8(has_run = 0 AND raw_rows > 0) AS unrun
FROM
(
    SELECT day, toUInt64(sum(rows)) AS r_raw, toUInt8(0) AS r_has, '' AS r_run, toUInt64(0) AS r_read, toUInt64(0) AS r_out,
        toUInt64(0) AS r_hourly, toUInt64(0) AS r_speed
    FROM `lambda`.`events_raw_days` GROUP BY day
    UNION ALL
    SELECT day, toUInt64(0), toUInt8(1), s_run, toUInt64(s_read), toUInt64(s_out), toUInt64(s_hourly), toUInt64(s_speed)
    FROM (SELECT day, argMax(run_id, at_us) AS s_run, argMax(rows_raw, at_us) AS s_read, argMax(rows_out, at_us) AS s_out,
    argMax(rows_hourly, at_us) AS s_hourly, argMax(rows_speed, at_us) AS s_speed
FROM `lambda`.`batch_runs` WHERE dataset = 'events' AND status = 'succeeded' GROUP BY day)
)
GROUP BY day) WHERE has_run = 1 AND dirty = 0)) AS exact
FROM `lambda`.`events_hourly`
WHERE toDate(hour, 'America/New_York') <= (SELECT argMax(watermark, at_us) FROM `lambda`.`batch_watermarks` WHERE dataset = 'events') AND grouping = 'device'
UNION ALL
SELECT
    toDateTime(toStartOfHour(minute, 'America/New_York'), 'UTC') AS hour,
    `d_device` AS `device`,
    toUInt64(countMerge(`s_events`)) AS `events`,
    toUInt64(uniqMerge(`s_users`)) AS `users`,
    if(sumMerge(`p_value`) = 0, NULL, toNullable(toFloat64(sumMerge(`s_revenue`)))) AS `revenue`,
    if(isNaN(toFloat64(quantileMerge(0.95)(`s_value_p95`))), NULL, toNullable(toFloat64(quantileMerge(0.95)(`s_value_p95`)))) AS `value_p95`,
    toFloat64(if(sumMerge(`p_value`) = 0, NULL, toNullable(toFloat64(sumMerge(`s_revenue`))))) / nullIf(toFloat64(toUInt64(countMerge(`s_events`))), 0) AS `revenue_per_event`,
    'speed' AS source,
    materialize(toUInt8(0)) AS exact
FROM
(
    SELECT
        minute,
        `device` AS `d_device`,
        `events` AS `s_events`,
        `users` AS `s_users`,
        `revenue` AS `s_revenue`,
        `value_p95` AS `s_value_p95`,
        `_n_value` AS `p_value`
    FROM `lambda`.`events_speed`
    WHERE toDate(minute, 'America/New_York') > (SELECT argMax(watermark, at_us) FROM `lambda`.`batch_watermarks` WHERE dataset = 'events')
)
GROUP BY hour, `device`;

CREATE VIEW `lambda`.`events_lambda_hourly_by_event_country_device` AS
SELECT
    hour,
    `event`,
    `country`,
    `device`,
    toUInt64(`events`) AS `events`,
    toUInt64(`users`) AS `users`,
    toNullable(toFloat64(`revenue`)) AS `revenue`,
    if(isNaN(toFloat64(`value_p95`)), NULL, toNullable(toFloat64(`value_p95`))) AS `value_p95`,
    toFloat64(toNullable(toFloat64(`revenue`))) / nullIf(toFloat64(toUInt64(`events`)), 0) AS `revenue_per_event`,
    'batch' AS source,
    toUInt8((toDate(hour, 'America/New_York'), run_id) IN (SELECT day, run_id FROM (SELECT day, sum(r_raw) AS raw_rows, max(r_has) AS has_run, max(r_run) AS run_id, max(r_read) AS rows_read, max(r_out) AS rows_out,
    max(r_hourly) AS rows_hourly, max(r_speed) AS rows_speed,
    toUInt8(has_run = 1 AND raw_rows > 0 AND raw_rows != rows_read) AS dirty,
    toUInt8(has_run = 0 AND raw_rows > 0) AS unrun
FROM
(
    SELECT day, toUInt64(sum(rows)) AS r_raw, toUInt8(0) AS r_has, '' AS r_run, toUInt64(0) AS r_read, toUInt64(0) AS r_out,
        toUInt64(0) AS r_hourly, toUInt64(0) AS r_speed
    FROM `lambda`.`events_raw_days` GROUP BY day
    UNION ALL
    SELECT day, toUInt64(0), toUInt8(1), s_run, toUInt64(s_read), toUInt64(s_out), toUInt64(s_hourly), toUInt64(s_speed)
    FROM (SELECT day, argMax(run_id, at_us) AS s_run, argMax(rows_raw, at_us) AS s_read, argMax(rows_out, at_us) AS s_out,
    argMax(rows_hourly, at_us) AS s_hourly, argMax(rows_speed, at_us) AS s_speed
FROM `lambda`.`batch_runs` WHERE dataset = 'events' AND status = 'succeeded' GROUP BY day)
)
GROUP BY day) WHERE has_run = 1 AND dirty = 0)) AS exact
FROM `lambda`.`events_hourly`
WHERE toDate(hour, 'America/New_York') <= (SELECT argMax(watermark, at_us) FROM `lambda`.`batch_watermarks` WHERE dataset = 'events') AND grouping = 'event,country,device'
UNION ALL
SELECT
    toDateTime(toStartOfHour(minute, 'America/New_York'), 'UTC') AS hour,
    `d_event` AS `event`,
    `d_country` AS `country`,
    `d_device` AS `device`,
    toUInt64(countMerge(`s_events`)) AS `events`,
    toUInt64(uniqMerge(`s_users`)) AS `users`,
    if(sumMerge(`p_value`) = 0, NULL, toNullable(toFloat64(sumMerge(`s_revenue`)))) AS `revenue`,
    if(isNaN(toFloat64(quantileMerge(0.95)(`s_value_p95`))), NULL, toNullable(toFloat64(quantileMerge(0.95)(`s_value_p95`)))) AS `value_p95`,
    toFloat64(if(sumMerge(`p_value`) = 0, NULL, toNullable(toFloat64(sumMerge(`s_revenue`))))) / nullIf(toFloat64(toUInt64(countMerge(`s_events`))), 0) AS `revenue_per_event`,
    'speed' AS source,
    materialize(toUInt8(0)) AS exact
FROM
(
    SELECT
        minute,
        `event` AS `d_event`,
        `country` AS `d_country`,
        `device` AS `d_device`,
        `events` AS `s_events`,
        `users` AS `s_users`,
        `revenue` AS `s_revenue`,
        `value_p95` AS `s_value_p95`,
        `_n_value` AS `p_value`
    FROM `lambda`.`events_speed`
    WHERE toDate(minute, 'America/New_York') > (SELECT argMax(watermark, at_us) FROM `lambda`.`batch_watermarks` WHERE dataset = 'events')
)
GROUP BY hour, `event`, `country`, `device`;
