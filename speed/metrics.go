package speed

import (
	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	consumed    *prometheus.CounterVec   // dataset
	inserted    *prometheus.CounterVec   // dataset, table
	rejected    *prometheus.CounterVec   // dataset, reason
	duplicates  *prometheus.CounterVec   // dataset
	corrections *prometheus.CounterVec   // dataset
	insertSecs  *prometheus.HistogramVec // dataset, table
	insertErrs  *prometheus.CounterVec   // dataset, table
	batchRows   *prometheus.HistogramVec // dataset
	buffered    *prometheus.GaugeVec     // dataset
	lag         *prometheus.GaugeVec     // dataset, partition
	watermark   *prometheus.GaugeVec     // dataset
	dedupIDs    *prometheus.GaugeVec     // dataset
	commits     *prometheus.CounterVec   // dataset
	stopped     *prometheus.GaugeVec     // dataset
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		consumed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lambda_speed_consumed_total", Help: "Kafka records consumed."}, []string{"dataset"}),
		inserted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lambda_speed_inserted_rows_total", Help: "Rows inserted into ClickHouse, by table (raw, rejects)."}, []string{"dataset", "table"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lambda_speed_rejected_total", Help: "Events rejected, by reason."}, []string{"dataset", "reason"}),
		duplicates: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lambda_speed_duplicates_total", Help: "Events dropped because their id was seen within the dedup window."}, []string{"dataset"}),
		corrections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lambda_speed_corrections_total", Help: "Late events for days the batch layer had sealed: written to raw only, they make the day dirty."}, []string{"dataset"}),
		insertSecs: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "lambda_speed_insert_seconds", Help: "Duration of successful inserts.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 14)}, []string{"dataset", "table"}),
		insertErrs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lambda_speed_insert_errors_total", Help: "Failed insert attempts (raw_lookup: reads of raw after a refusal), retried unless ClickHouse refused them for good."}, []string{"dataset", "table"}),
		batchRows: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "lambda_speed_batch_rows", Help: "Rows per flush to raw.",
			Buckets: prometheus.ExponentialBuckets(10, 4, 9)}, []string{"dataset"}),
		buffered: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "lambda_speed_buffered_rows", Help: "Rows decoded and waiting for the next flush."}, []string{"dataset"}),
		lag: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "lambda_speed_lag_records", Help: "Records between the committed offset and the partition's end, per owned partition."}, []string{"dataset", "partition"}),
		watermark: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "lambda_speed_watermark_timestamp_seconds", Help: "This process's speed watermark (Unix time): the oldest newest-committed event time over its partitions, now for caught-up ones."}, []string{"dataset"}),
		dedupIDs: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "lambda_speed_dedup_ids", Help: "Ids held by the dedup window."}, []string{"dataset"}),
		commits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lambda_speed_commits_total", Help: "Offset commits after successful flushes."}, []string{"dataset"}),
		stopped: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "lambda_speed_dataset_stopped", Help: "1 when the dataset stopped because ClickHouse refuses its flushes for good (nothing of them committed; restart after the fix), else 0."}, []string{"dataset"}),
	}
	if reg != nil {
		reg.MustRegister(m.consumed, m.inserted, m.rejected, m.duplicates, m.corrections, m.insertSecs,
			m.insertErrs, m.batchRows, m.buffered, m.lag, m.watermark, m.dedupIDs, m.commits, m.stopped)
	}
	return m
}
