package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/IBM/sarama"
	"github.com/valyala/fastjson"

	"github.com/lambda-platform/lambda/shared/config"
	"github.com/lambda-platform/lambda/shared/event"
	"github.com/lambda-platform/lambda/shared/kafkaconn"
	"github.com/lambda-platform/lambda/shared/metric"
)

func init() {
	register("sample", "show how a dataset's config decodes the newest records of its topic, per field, without committing anything", runSample)
	describe("sample", helpText{
		Examples: []string{
			"lambda sample --config lambda.yaml --dataset orders -n 20",
			"lambda sample --dataset orders --from-beginning",
		},
		Notes: "A plain consumer: no group, nothing committed. Per record, each dimension and metric field decoded or the\n" +
			"reject reason; then how often each field is missing and the reasons counted.",
	})
}

func runSample(ctx context.Context, args []string) error {
	fs, path := flags("sample")
	dataset := fs.String("dataset", "", "dataset whose topic to read (default: the only one)")
	n := fs.Int("n", 20, "records to show")
	fromBeginning := fs.Bool("from-beginning", false, "show the oldest records the topic holds instead of the newest")
	cfg, err := loadConfig(fs, path, args)
	if err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	d, err := pickDataset(cfg, *dataset)
	if err != nil {
		return err
	}
	return sample(ctx, stdout, cfg, d, sampleOptions{N: *n, FromBeginning: *fromBeginning})
}

// sampleOptions say what to read.
type sampleOptions struct {
	N             int
	FromBeginning bool
	// Now is the clock the decoder checks event times against (time.Now when nil).
	Now func() time.Time
	// Wait bounds how long a partition may stay silent before its records are all in
	// (default 5 s): a range can end in offsets that carry no record (transaction markers).
	Wait time.Duration
}

// sample reads the N newest (or oldest) records of the dataset's topic with a plain consumer
// (no group: nothing is committed, no consumer shows up in the group's lag) and writes per
// record the decoded value of every field, or why the speed layer would reject it, and then
// which fields are missing how often and the reject reasons counted.
func sample(ctx context.Context, w io.Writer, cfg *config.Config, d *config.Dataset, o sampleOptions) error {
	if o.N <= 0 {
		return errors.New("-n must be positive")
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Wait <= 0 {
		o.Wait = 5 * time.Second
	}
	sc, err := kafkaconn.Config(cfg.Kafka, cfg.Kafka.ClientID+"-sample")
	if err != nil {
		return err
	}
	if err := kafkaconn.Check(ctx, cfg.Kafka, sc); err != nil {
		return err
	}
	client, err := sarama.NewClient(cfg.Kafka.Brokers, sc)
	if err != nil {
		return fmt.Errorf("cannot connect to kafka %v: %w", cfg.Kafka.Brokers, err)
	}
	defer client.Close()
	msgs, parts, held, err := readRecords(ctx, client, d.Topic, o)
	if err != nil {
		return err
	}
	which := "newest"
	if o.FromBeginning {
		which = "oldest"
	}
	ps := "s hold"
	if parts == 1 {
		ps = " holds"
	}
	fmt.Fprintf(w, "dataset %s, topic %s: %d partition%s %s records; the %d %s, decoded as the speed layer does (nothing committed)\n\n",
		d.Name, d.Topic, parts, ps, itoa(held), len(msgs), which)
	if len(msgs) == 0 {
		return nil
	}
	printSample(w, cfg, d, msgs, o.Now())
	return nil
}

// readRecords returns the N newest (or oldest) records of the topic in time order (Kafka
// timestamp, then partition and offset), the partition count and the records the topic holds.
func readRecords(ctx context.Context, client sarama.Client, topic string, o sampleOptions) ([]*sarama.ConsumerMessage, int, int64, error) {
	parts, err := client.Partitions(topic)
	if err != nil {
		return nil, 0, 0, fmt.Errorf("cannot list the partitions of topic %s: %w", topic, err)
	}
	consumer, err := sarama.NewConsumerFromClient(client)
	if err != nil {
		return nil, 0, 0, err
	}
	defer consumer.Close()
	var (
		mu   sync.Mutex
		msgs []*sarama.ConsumerMessage
		held int64
		wg   sync.WaitGroup
		errs []error
	)
	for _, p := range parts {
		oldest, err := client.GetOffset(topic, p, sarama.OffsetOldest)
		if err != nil {
			return nil, 0, 0, fmt.Errorf("cannot read the offsets of %s/%d: %w", topic, p, err)
		}
		newest, err := client.GetOffset(topic, p, sarama.OffsetNewest)
		if err != nil {
			return nil, 0, 0, fmt.Errorf("cannot read the offsets of %s/%d: %w", topic, p, err)
		}
		held += newest - oldest
		// Each partition gives at most N: the N records wanted are among them.
		from, to := max(oldest, newest-int64(o.N)), newest
		if o.FromBeginning {
			from, to = oldest, min(newest, oldest+int64(o.N))
		}
		if from >= to {
			continue
		}
		pc, err := consumer.ConsumePartition(topic, p, from)
		if err != nil {
			return nil, 0, 0, fmt.Errorf("cannot consume %s/%d: %w", topic, p, err)
		}
		wg.Go(func() {
			defer pc.Close()
			timer := time.NewTimer(o.Wait)
			defer timer.Stop()
			for {
				select {
				case m := <-pc.Messages():
					if m.Offset >= to {
						return
					}
					mu.Lock()
					msgs = append(msgs, m)
					mu.Unlock()
					if m.Offset >= to-1 {
						return
					}
					timer.Reset(o.Wait)
				case err := <-pc.Errors():
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
					return
				case <-timer.C:
					return
				case <-ctx.Done():
					return
				}
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, 0, 0, err
	}
	if ctx.Err() != nil {
		return nil, 0, 0, ctx.Err()
	}
	slices.SortFunc(msgs, func(a, b *sarama.ConsumerMessage) int {
		if c := a.Timestamp.Compare(b.Timestamp); c != 0 {
			return c
		}
		if a.Partition != b.Partition {
			return int(a.Partition - b.Partition)
		}
		return int(a.Offset - b.Offset)
	})
	if len(msgs) > o.N {
		if o.FromBeginning {
			msgs = msgs[:o.N]
		} else {
			msgs = msgs[len(msgs)-o.N:]
		}
	}
	return msgs, len(parts), held, nil
}

// sampleField is a field of the event the dataset reads.
type sampleField struct {
	field, column string
	path          []string
}

// printSample writes the table of decoded records and the summary.
func printSample(w io.Writer, cfg *config.Config, d *config.Dataset, msgs []*sarama.ConsumerMessage, now time.Time) {
	lim := event.Limits{MaxBytes: cfg.Speed.MaxEventBytes, FutureSkew: cfg.Speed.FutureSkew.D(), MaxAge: d.RawRetention.D()}
	dec := event.NewDecoder(d, lim)
	fields := []sampleField{{field: d.TimeField, column: "time"}, {field: d.IDField, column: "id"}}
	for _, dim := range d.Dimensions {
		fields = append(fields, sampleField{field: dim.Field, column: dim.Name})
	}
	vals := d.ValueColumns()
	for _, c := range vals {
		fields = append(fields, sampleField{field: c.Field, column: c.Name})
	}
	for i := range fields {
		fields[i].path = strings.Split(fields[i].field, ".")
	}

	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	head := []string{"#", "partition:offset"}
	for _, f := range fields {
		h := f.column
		if f.field != f.column {
			h += " (" + f.field + ")"
		}
		head = append(head, h)
	}
	fmt.Fprintln(tw, strings.Join(append(head, "result"), "\t"))
	missing := make([]int, len(fields))
	objects := 0
	reasons := map[event.Reason]int{}
	var p fastjson.Parser
	var row event.Row
	for i, m := range msgs {
		cells := []string{strconv.Itoa(i + 1), fmt.Sprintf("%d:%d", m.Partition, m.Offset)}
		v, perr := p.ParseBytes(m.Value)
		isObject := perr == nil && v.Type() == fastjson.TypeObject
		if isObject {
			objects++
			for j, f := range fields {
				if x := v.Get(f.path...); x == nil || x.Type() == fastjson.TypeNull {
					missing[j]++
				}
			}
		}
		reason, detail := dec.Decode(m.Value, m.Topic, m.Partition, m.Offset, now, &row)
		if reason != "" {
			reasons[reason]++
			for range fields {
				cells = append(cells, "")
			}
			cells = append(cells, string(reason)+": "+clip(detail, 100))
			fmt.Fprintln(tw, strings.Join(cells, "\t"))
			continue
		}
		present := func(j int) bool {
			x := v.Get(fields[j].path...)
			return x != nil && x.Type() != fastjson.TypeNull
		}
		cells = append(cells, row.Time.UTC().Format("2006-01-02 15:04:05.000"))
		if present(1) {
			cells = append(cells, clip(row.ID, 28))
		} else {
			cells = append(cells, "- ("+clip(row.ID, 28)+")")
		}
		for j := range d.Dimensions {
			cells = append(cells, show(row.Dims[j], present(2+j)))
		}
		for j, c := range vals {
			k := 2 + len(d.Dimensions) + j
			if c.Type == metric.KeyType {
				cells = append(cells, show(row.Keys[j], present(k)))
			} else if !row.Nums[j].Valid {
				cells = append(cells, "-")
			} else {
				cells = append(cells, strconv.FormatFloat(row.Nums[j].Float64, 'g', -1, 64))
			}
		}
		fmt.Fprintln(tw, strings.Join(append(cells, "ok"), "\t"))
	}
	_ = tw.Flush()

	fmt.Fprintf(w, "\n- missing or null; an id in parentheses is derived from topic, partition and offset.\n\n")
	fmt.Fprintf(w, "fields missing or null, of %d records that are JSON objects:\n", objects)
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for j, f := range fields {
		share := "-"
		if objects > 0 {
			share = fmt.Sprintf("%d%% (%d)", (100*missing[j]+objects/2)/objects, missing[j])
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\n", f.field, f.column, share)
	}
	_ = tw.Flush()
	rejected := 0
	for _, n := range reasons {
		rejected += n
	}
	fmt.Fprintf(w, "rejected: %d of %d records", rejected, len(msgs))
	if rejected > 0 {
		var rs []string
		for _, r := range event.Reasons {
			if reasons[r] > 0 {
				rs = append(rs, fmt.Sprintf("%s %d", r, reasons[r]))
			}
		}
		fmt.Fprintf(w, ": %s", strings.Join(rs, ", "))
	}
	fmt.Fprintln(w)
}

// show renders a decoded string: "-" when the field is missing, "" quoted when empty.
func show(s string, present bool) string {
	switch {
	case !present:
		return "-"
	case s == "":
		return `""`
	}
	return clip(s, 28)
}

// clip cuts s to n runes with an ellipsis, on one line.
func clip(s string, n int) string {
	s = strings.ReplaceAll(strings.ReplaceAll(s, "\n", `\n`), "\t", " ")
	if r := []rune(s); len(r) > n {
		return string(r[:n-1]) + "…"
	}
	return s
}
