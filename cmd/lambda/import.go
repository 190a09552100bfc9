package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/lambda-platform/lambda/batchlayer"
	"github.com/lambda-platform/lambda/shared/chconn"
	"github.com/lambda-platform/lambda/shared/config"
	"github.com/lambda-platform/lambda/shared/event"
	"github.com/lambda-platform/lambda/shared/ledger"
	"github.com/lambda-platform/lambda/shared/rawbatch"
	"github.com/lambda-platform/lambda/shared/schema"
)

func init() {
	register("import", "load JSON-lines or CSV history (gzip too) into a dataset's raw table through the speed layer's decoder and rejects", runImport)
	describe("import", helpText{
		Usage: []string{"import [flags] FILE…"},
		Examples: []string{
			"lambda import --config lambda.yaml --dataset orders history-2026-10.jsonl.gz",
			"lambda import --dataset orders a.csv b.csv --recompute   # make the days exact now",
		},
		Notes: "Rows go to <dataset>_raw as corrections (never to the speed view); ids missing from a record are derived\n" +
			"from the file name and line, so importing a file twice changes nothing. The batch scheduler makes the\n" +
			"touched days exact at its next tick, or --recompute does now. docs/your-own-events.md.",
	})
}

func runImport(ctx context.Context, args []string) error {
	fs, path := flags("import")
	dataset := fs.String("dataset", "", "dataset to import into (default: the only one)")
	recompute := fs.Bool("recompute", false, "recompute the days the files touched now, instead of at the batch scheduler's next tick")
	batchRows := fs.Int("batch-rows", 200_000, "records per insert")
	// Flags may come after the files too: `lambda import --dataset D a.jsonl --recompute`.
	var files []string
	for rest := args; ; {
		if err := parseFlags(fs, rest); err != nil {
			return err
		}
		if fs.NArg() == 0 {
			break
		}
		files = append(files, fs.Arg(0))
		rest = fs.Args()[1:]
	}
	if len(files) == 0 {
		fs.Usage()
		return errors.New("no file to import: lambda import --dataset D FILE…")
	}
	cfg, err := config.Load(*path)
	if err != nil {
		return err
	}
	d, err := pickDataset(cfg, *dataset)
	if err != nil {
		return err
	}
	conn, err := chconn.Open(ctx, cfg.ClickHouse)
	if err != nil {
		return err
	}
	defer conn.Close()
	tty := isTerminal(os.Stdout)
	st, err := importFiles(ctx, cfg, conn, d, files, importOptions{BatchRows: *batchRows, Progress: stdout, TTY: tty})
	if err != nil && st.Records == 0 && st.Rejects == 0 {
		return err
	}
	st.print(stdout, cfg, d)
	if err != nil {
		return err
	}
	if len(st.Days) == 0 {
		return nil
	}
	if !*recompute {
		fmt.Println("The batch scheduler makes these days exact at its next tick (--recompute does it now).")
		return nil
	}
	return recomputeDays(ctx, cfg, d.Name, st.dayList(), os.Stdout, tty)
}

// pickDataset returns the named dataset, or the only one when name is empty.
func pickDataset(cfg *config.Config, name string) (*config.Dataset, error) {
	if name == "" {
		if len(cfg.Datasets) == 1 {
			return &cfg.Datasets[0], nil
		}
		var names []string
		for _, d := range cfg.Datasets {
			names = append(names, d.Name)
		}
		return nil, fmt.Errorf("--dataset is required: one of %s", strings.Join(names, ", "))
	}
	d, ok := cfg.Dataset(name)
	if !ok {
		var names []string
		for _, d := range cfg.Datasets {
			names = append(names, d.Name)
		}
		return nil, fmt.Errorf("unknown dataset %q (the config declares %s)", name, strings.Join(names, ", "))
	}
	return d, nil
}

// importOptions tune an import.
type importOptions struct {
	// BatchRows is how many records one insert holds (default 200 000).
	BatchRows int
	// Progress receives a progress bar (TTY) or a line every 5 seconds; nil for none.
	Progress io.Writer
	TTY      bool
	// Now is the clock the decoder checks event times against (time.Now when nil).
	Now func() time.Time
}

// importStats is what an import did.
type importStats struct {
	Files   []fileStats
	Records int64 // read from the files
	Rows    int64 // written to raw
	Rejects int64 // written to rejects
	Reasons map[event.Reason]int64
	// Days counts the rows written per UTC day (days since 1970-01-01).
	Days map[int64]int64
	Took time.Duration
}

type fileStats struct {
	Name                   string
	Records, Rows, Rejects int64
}

// importBatch is a batch of one file's records on its way to ClickHouse.
type importBatch struct {
	file    int
	topic   string
	rows    rawbatch.Columns
	rejects []importReject
	records int64
}

type importReject struct {
	payload, reason, detail string
	line                    int64
}

// importFiles reads the files in order and writes their records: the decoded rows to raw, in
// columnar inserts of up to BatchRows records, the others to rejects, exactly as the speed
// layer would, with these differences:
//   - _topic is "import:<file base name>", _partition is -1 and _offset is the line number;
//   - a record without an id gets one derived from them (event.KeyID), so that importing the
//     same file again adds copies that the batch layer's dedup drops;
//   - _late is 1: imported rows never feed the per-minute speed view, only the batch layer.
//
// Reading and decoding overlap with the inserts. It stops at the first failed insert (after
// retries) or when ctx is done: what was inserted stays, and importing the files again is
// safe. The stats count what was written.
func importFiles(ctx context.Context, cfg *config.Config, conn driver.Conn, d *config.Dataset, files []string, o importOptions) (*importStats, error) {
	if o.BatchRows <= 0 {
		o.BatchRows = 200_000
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	start := time.Now()
	st := &importStats{Reasons: map[event.Reason]int64{}, Days: map[int64]int64{}}
	bases := map[string]string{}
	for _, f := range files {
		st.Files = append(st.Files, fileStats{Name: f})
		if other, dup := bases[filepath.Base(f)]; dup {
			return st, fmt.Errorf("%s and %s have the same name: ids derived from the file name and line would collide; rename one", other, f)
		}
		bases[filepath.Base(f)] = f
	}
	g := schema.NewGenerator(cfg)
	raw := g.T(schema.Raw(d.Name))
	if err := tableExists(ctx, conn, cfg.ClickHouse.Database, schema.Raw(d.Name)); err != nil {
		return st, err
	}
	native := rawbatch.NewNative(cfg.ClickHouse)
	defer native.Close()
	w := rawbatch.NewWriter(raw, d, native)
	rejSQL := "INSERT INTO " + g.T(schema.Rejects(d.Name)) + " (payload, reason, detail, _topic, _partition, _offset)"
	isKey := w.IsKey()
	lim := event.Limits{MaxBytes: cfg.Speed.MaxEventBytes, FutureSkew: cfg.Speed.FutureSkew.D(), MaxAge: d.RawRetention.D()}
	now := o.Now()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	loc := d.Location()
	var mu sync.Mutex // guards st and insertErr for the inserters
	var read, written atomic.Int64
	batches := make(chan *importBatch, 1)
	var insertErr error
	var inserters sync.WaitGroup
	for range importInserters {
		inserters.Go(func() {
			for b := range batches {
				mu.Lock()
				failed := insertErr != nil
				mu.Unlock()
				if failed {
					continue // drain
				}
				t0 := time.Now()
				if err := insertBatch(ctx, conn, w, rejSQL, b); err != nil {
					mu.Lock()
					if insertErr == nil {
						insertErr = err
					}
					mu.Unlock()
					cancel()
					continue
				}
				slog.Debug("import batch inserted", "file", b.topic, "rows", b.rows.Len(), "rejects", len(b.rejects), "took", time.Since(t0).Round(time.Millisecond))
				mu.Lock()
				f := &st.Files[b.file]
				f.Records += b.records
				f.Rows += int64(b.rows.Len())
				f.Rejects += int64(len(b.rejects))
				st.Records += b.records
				st.Rows += int64(b.rows.Len())
				st.Rejects += int64(len(b.rejects))
				for i := range b.rows.Len() {
					if loc == time.UTC {
						st.Days[b.rows.DayAt(i)]++
					} else { // the dataset's local day, which the batch layer recomputes
						st.Days[ledger.DayIn(b.rows.TimeAt(i), loc).Unix()/86400]++
					}
				}
				for _, r := range b.rejects {
					st.Reasons[event.Reason(r.reason)]++
				}
				mu.Unlock()
				written.Add(b.records)
			}
		})
	}

	var cur atomic.Pointer[recordFile]
	var curName atomic.Pointer[string] // stays on the last file while its rows are inserted
	var doneBytes atomic.Int64
	var total int64
	for _, f := range files {
		if fi, err := os.Stat(f); err == nil {
			total += fi.Size()
		}
	}
	stopProgress := startProgress(o, func() progressState {
		s := progressState{records: read.Load(), written: written.Load(), bytes: doneBytes.Load(), total: total, elapsed: time.Since(start)}
		if rf := cur.Load(); rf != nil {
			n, _ := rf.Progress()
			s.bytes += n
		}
		if name := curName.Load(); name != nil {
			s.file = *name
		}
		return s
	})

	readErr := func() error {
		for i, path := range files {
			rf, err := openRecords(path)
			if err != nil {
				return err
			}
			cur.Store(rf)
			name := filepath.Base(path)
			curName.Store(&name)
			err = readFile(ctx, rf, i, d, lim, now, isKey, o.BatchRows, batches, &read)
			_ = rf.Close()
			_, size := rf.Progress()
			doneBytes.Add(size)
			cur.Store(nil)
			if err != nil {
				return err
			}
		}
		return nil
	}()
	close(batches)
	inserters.Wait()
	stopProgress()
	st.Took = time.Since(start)
	switch {
	case insertErr != nil:
		return st, fmt.Errorf("import stopped: %w (the rows counted above are in %s; importing the files again is safe: ids dedupe)", insertErr, raw)
	case readErr != nil:
		return st, readErr
	}
	return st, nil
}

// readFile decodes the records of one file into batches.
func readFile(ctx context.Context, rf *recordFile, file int, d *config.Dataset, lim event.Limits, now time.Time, isKey []bool,
	batchRows int, out chan<- *importBatch, read *atomic.Int64) error {
	base := filepath.Base(rf.path)
	topic := "import:" + base
	dec := event.NewDecoder(d, lim)
	var row event.Row
	newBatch := func() *importBatch {
		return &importBatch{file: file, topic: topic, rows: rawbatch.New(len(d.Dimensions), len(isKey))}
	}
	b := newBatch()
	send := func() error {
		select {
		case out <- b:
		case <-ctx.Done():
			return ctx.Err()
		}
		b = newBatch()
		return nil
	}
	for {
		value, line, bad, err := rf.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		b.records++
		read.Add(1)
		reason, detail := event.Reason(""), ""
		if bad != "" {
			reason, detail = event.InvalidJSON, bad
		} else {
			reason, detail = dec.Decode(value, topic, -1, line, now, &row)
		}
		if reason != "" {
			payload := value
			if len(payload) > maxRejectPayload {
				payload = payload[:maxRejectPayload]
			}
			b.rejects = append(b.rejects, importReject{payload: string(payload), reason: string(reason),
				detail: fmt.Sprintf("%s:%d: %s", base, line, detail), line: line})
		} else {
			b.rows.Add(&row, line, true, isKey)
		}
		if b.records >= int64(batchRows) {
			if err := send(); err != nil {
				return err
			}
		}
	}
	if b.records > 0 {
		return send()
	}
	return nil
}

// importInserters is how many inserts run at once: ClickHouse writes one insert with one
// thread, so a second one keeps another core busy while the first is written.
const importInserters = 2

// maxRejectPayload caps the payload kept in <ds>_rejects, as the speed layer does.
const maxRejectPayload = 1 << 20

// insertBatch writes a batch's rows (in inserts of at most rawbatch.MaxDaysPerInsert days)
// and rejects, retrying each insert a few times.
func insertBatch(ctx context.Context, conn driver.Conn, w *rawbatch.Writer, rejSQL string, b *importBatch) error {
	for _, rows := range splitDays(&b.rows, w.IsKey()) {
		if rows.Len() == 0 {
			continue
		}
		part := []rawbatch.Part{{Topic: b.topic, Partition: -1, Rows: rows}}
		if err := retryInsert(ctx, func(ctx context.Context) error { return w.Send(ctx, part) }); err != nil {
			return fmt.Errorf("cannot insert %d rows of %s: %w", rows.Len(), strings.TrimPrefix(b.topic, "import:"), err)
		}
	}
	if len(b.rejects) == 0 {
		return nil
	}
	err := retryInsert(ctx, func(ctx context.Context) (err error) {
		batch, err := conn.PrepareBatch(ctx, rejSQL)
		if err != nil {
			return err
		}
		defer func() {
			if err != nil {
				_ = batch.Abort()
			}
		}()
		for _, r := range b.rejects {
			if err := batch.Append(r.payload, r.reason, r.detail, b.topic, int32(-1), r.line); err != nil {
				return err
			}
		}
		return batch.Send()
	})
	if err != nil {
		return fmt.Errorf("cannot insert %d rejects of %s: %w", len(b.rejects), strings.TrimPrefix(b.topic, "import:"), err)
	}
	return nil
}

// splitDays returns the rows as is when they span at most rawbatch.MaxDaysPerInsert days,
// else in pieces that each do.
func splitDays(c *rawbatch.Columns, isKey []bool) []*rawbatch.Columns {
	days := map[int64]bool{}
	for i := range c.Len() {
		days[c.DayAt(i)] = true
	}
	if len(days) <= rawbatch.MaxDaysPerInsert {
		return []*rawbatch.Columns{c}
	}
	sorted := make([]int64, 0, len(days))
	for day := range days {
		sorted = append(sorted, day)
	}
	slices.Sort(sorted)
	var out []*rawbatch.Columns
	for i := 0; i < len(sorted); i += rawbatch.MaxDaysPerInsert {
		lo, hi := sorted[i], sorted[min(i+rawbatch.MaxDaysPerInsert, len(sorted))-1]
		sub := c.Filter(func(i int) bool { day := c.DayAt(i); return day >= lo && day <= hi }, isKey)
		out = append(out, &sub)
	}
	return out
}

// retryInsert runs op up to three times, a second apart; a cancelled ctx stops it.
func retryInsert(ctx context.Context, op func(context.Context) error) error {
	var err error
	for attempt := 1; attempt <= 3; attempt++ {
		if err = op(ctx); err == nil || ctx.Err() != nil {
			return err
		}
		slog.Warn("insert failed, retrying", "attempt", attempt, "err", err)
		select {
		case <-ctx.Done():
			return err
		case <-time.After(time.Second):
		}
	}
	return err
}

// tableExists says, when the table is missing, to run migrate first.
func tableExists(ctx context.Context, conn driver.Conn, db, table string) error {
	var n uint64
	if err := conn.QueryRow(ctx, "SELECT count() FROM system.tables WHERE database = ? AND name = ?", db, table).Scan(&n); err != nil {
		return fmt.Errorf("cannot look for table %s.%s: %w", db, table, err)
	}
	if n == 0 {
		return fmt.Errorf("table %s.%s does not exist: run `lambda migrate` with this config first", db, table)
	}
	return nil
}

// dayList returns the days touched, in order.
func (st *importStats) dayList() []time.Time {
	var out []time.Time
	for day := range st.Days {
		out = append(out, time.Unix(day*86400, 0).UTC())
	}
	slices.SortFunc(out, func(a, b time.Time) int { return a.Compare(b) })
	return out
}

// print writes what the import did: per file, in total, per day touched.
func (st *importStats) print(w io.Writer, cfg *config.Config, d *config.Dataset) {
	for _, f := range st.Files {
		fmt.Fprintf(w, "%s: %s records, %s rows, %s rejected\n", f.Name, itoa(f.Records), itoa(f.Rows), itoa(f.Rejects))
	}
	rate := float64(st.Records) / max(st.Took.Seconds(), 1e-9)
	s := "s"
	if len(st.Files) == 1 {
		s = ""
	}
	fmt.Fprintf(w, "imported %s records from %d file%s in %s (%s records/s): %s rows into %s.%s, %s rejected into %s.%s",
		itoa(st.Records), len(st.Files), s, st.Took.Round(10*time.Millisecond), itoa(int64(rate)), itoa(st.Rows),
		cfg.ClickHouse.Database, schema.Raw(d.Name), itoa(st.Rejects), cfg.ClickHouse.Database, schema.Rejects(d.Name))
	if len(st.Reasons) > 0 {
		var rs []string
		for _, r := range event.Reasons {
			if n := st.Reasons[r]; n > 0 {
				rs = append(rs, fmt.Sprintf("%s %s", r, itoa(n)))
			}
		}
		fmt.Fprintf(w, " (%s)", strings.Join(rs, ", "))
	}
	fmt.Fprintln(w)
	if len(st.Days) > 0 {
		fmt.Fprintf(w, "rows per day touched (%s):\n", d.Location())
		for _, day := range st.dayList() {
			fmt.Fprintf(w, "  %s  %12s\n", day.Format(time.DateOnly), itoa(st.Days[rawbatch.DayOf(day)]))
		}
	}
}

// recomputeDays runs the batch layer for the days, range by range of consecutive days.
func recomputeDays(ctx context.Context, cfg *config.Config, dataset string, days []time.Time, w io.Writer, tty bool) error {
	log := slog.Default()
	if tty {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: max(slog.LevelWarn, logLevel)}))
	}
	layer, err := batchlayer.New(cfg, batchlayer.Options{Logger: log})
	if err != nil {
		return err
	}
	defer layer.Close()
	done := 0
	for i := 0; i < len(days); {
		j := i
		for j+1 < len(days) && days[j+1].Sub(days[j]) == 24*time.Hour {
			j++
		}
		err := layer.RunDays(ctx, dataset, days[i], days[j], func(p batchlayer.Progress) {
			if p.Err != nil {
				return
			}
			done++
			if tty {
				fmt.Fprintf(w, "\rrecomputing %s: day %d/%d (%s)\x1b[K", dataset, done, len(days), p.Day.Format(time.DateOnly))
			} else {
				fmt.Fprintf(w, "recomputed %s %s: %s raw rows, %s after dedup (%d/%d)\n", dataset, p.Day.Format(time.DateOnly),
					itoa(int64(p.RowsRaw)), itoa(int64(p.RowsDedup)), done, len(days))
			}
		})
		if err != nil {
			if tty {
				fmt.Fprintln(w)
			}
			return fmt.Errorf("cannot recompute %s %s..%s: %w", dataset, days[i].Format(time.DateOnly), days[j].Format(time.DateOnly), err)
		}
		i = j + 1
	}
	if tty {
		fmt.Fprintln(w)
	}
	fmt.Fprintf(w, "recomputed %d days of %s: they are exact now\n", len(days), dataset)
	return nil
}

// progressState is a snapshot for the progress display.
type progressState struct {
	file             string
	records, written int64
	bytes, total     int64
	elapsed          time.Duration
}

// startProgress draws a progress bar every 200 ms on a terminal, or writes a plain line every
// 5 seconds otherwise, until the returned function is called.
func startProgress(o importOptions, state func() progressState) (stop func()) {
	if o.Progress == nil {
		return func() {}
	}
	every := 5 * time.Second
	if o.TTY {
		every = 200 * time.Millisecond
	}
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-done:
				if o.TTY {
					fmt.Fprint(o.Progress, "\r\x1b[K")
				}
				return
			case <-t.C:
				drawProgress(o.Progress, o.TTY, state())
			}
		}
	}()
	return func() { close(done); <-finished }
}

func drawProgress(w io.Writer, tty bool, s progressState) {
	frac := 0.0
	if s.total > 0 {
		frac = min(1, float64(s.bytes)/float64(s.total))
	}
	rate := float64(s.records) / max(s.elapsed.Seconds(), 1e-9)
	eta := "-"
	if frac > 0.01 {
		eta = (time.Duration(float64(s.elapsed)/frac) - s.elapsed).Round(time.Second).String()
	}
	if !tty {
		fmt.Fprintf(w, "import: %s %3.0f%%, %s records read, %s written, %s records/s, eta %s\n", s.file, 100*frac,
			itoa(s.records), itoa(s.written), itoa(int64(rate)), eta)
		return
	}
	const width = 30
	n := int(frac * width)
	fmt.Fprintf(w, "\r%s [%s%s] %3.0f%%  %s records  %s/s  eta %s\x1b[K", s.file, strings.Repeat("#", n), strings.Repeat(" ", width-n),
		100*frac, itoa(s.records), itoa(int64(rate)), eta)
}
