package rawbatch

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/ClickHouse/ch-go/compress"
	"github.com/ClickHouse/ch-go/proto"
	"github.com/ClickHouse/clickhouse-go/v2"

	"github.com/lambda-platform/lambda/shared/config"
)

// The native-protocol insert client.
//
// clickhouse-go builds every insert from fresh columns (PrepareBatch) and copies the rows into
// them; at 100k-row flushes that copy and its slice growth cost the speed layer more than
// encoding itself (BENCHMARKS.md). ch-go's client would take prebuilt columns, but it does not
// speak to ClickHouse 18.16: it leaves the client info out of the query packet below revision
// 54420, and 18.16 is 54412. So raw inserts go through this small client: ch-go's proto
// package encodes and decodes every packet except the query packet, which is written here with
// clickhouse-go's revision gates, and the rows are encoded straight from Columns (ch-go proto
// columns kept across flushes) into LZ4 frames of at most frameSize bytes.
//
// It announces protocol revision 54460, as clickhouse-go v2.50 does; the server answers with
// the lower of that and its own (54412 for 18.16), and every packet is written and read at
// that revision. It only inserts: a connection runs one INSERT at a time and goes back to the
// pool after a clean end of stream; after any other outcome it is closed.

// clientRevision is the native protocol revision this client speaks at most.
const clientRevision = 54460

// Revision gates of the query packet (ClickHouse's src/Core/ProtocolDefines.h).
const (
	revClientInfo          = 54032
	revQuotaKeyInInfo      = 54060
	revVersionPatch        = 54401
	revSettingsAsStrings   = 54429
	revInterserverSecret   = 54441
	revOpenTelemetry       = 54442
	revDistributedDepth    = 54448
	revQueryStartTime      = 54449
	revParallelReplicas    = 54453
	revCustomSerialization = 54454
	revAddendum            = 54458
	revParameters          = 54459
	stageComplete          = 2
	clientName             = "lambda-rawbatch"
	clientMajor, clientMin = 1, 0
)

// frameSize is the most uncompressed bytes in one LZ4 frame (ClickHouse's own
// max_compress_block_size): the encoder keeps one frame and one column at a time, not the
// whole block.
const frameSize = 1 << 20

// Setting is a query setting sent with every insert (insert_distributed_sync in cluster
// mode). Values are integers: 18.16 reads settings in a binary form that has no strings.
type Setting struct {
	Key   string
	Value int
}

// Native is a pool of native-protocol connections for inserts. It is safe for concurrent use.
type Native struct {
	cfg      config.ClickHouse
	tls      *tls.Config
	tlsErr   error
	settings []Setting
	idle     chan *nconn
	hostname string
	user     string
}

// NewNative returns an insert client for a configuration; it connects on first use. In cluster
// mode every insert runs with insert_distributed_sync=1, as shared/chconn sets for
// clickhouse-go: an insert returns once every shard has its rows.
func NewNative(c config.ClickHouse) *Native {
	n := &Native{cfg: c, idle: make(chan *nconn, max(2, min(c.MaxOpenConns, 8)))}
	n.tls, n.tlsErr = c.TLS.Config()
	if c.Cluster != "" {
		n.settings = append(n.settings, Setting{Key: "insert_distributed_sync", Value: 1})
	}
	n.hostname, _ = os.Hostname()
	n.user = os.Getenv("USER")
	return n
}

// WithSettings returns a client with more settings on every insert (tests).
func (n *Native) WithSettings(s ...Setting) *Native {
	m := NewNative(n.cfg)
	m.settings = append(m.settings, s...)
	return m
}

// Close closes the idle connections.
func (n *Native) Close() {
	for {
		select {
		case c := <-n.idle:
			c.close()
		default:
			return
		}
	}
}

// nconn is one connection.
type nconn struct {
	conn     net.Conn
	r        *proto.Reader
	w        *bufio.Writer
	revision int
	// Encoding buffers, kept across inserts: a packet, the uncompressed bytes of the block not
	// yet framed, and the compressor's output.
	pkt   proto.Buffer
	block proto.Buffer
	lz4   *compress.Writer
	// header is the server's description of the insert's columns.
	header proto.ColInfoInput
}

func (c *nconn) close() { _ = c.conn.Close() }

// get returns an idle connection (pooled) or a new one.
func (n *Native) get(ctx context.Context) (c *nconn, pooled bool, err error) {
	select {
	case c := <-n.idle:
		return c, true, nil
	default:
	}
	c, err = n.dial(ctx)
	return c, false, err
}

func (n *Native) put(c *nconn) {
	select {
	case n.idle <- c:
	default:
		c.close()
	}
}

// dial connects to the first address that answers, in order, as clickhouse-go's
// ConnOpenInOrder does.
func (n *Native) dial(ctx context.Context) (*nconn, error) {
	if n.tlsErr != nil {
		return nil, fmt.Errorf("clickhouse.tls.%w", n.tlsErr)
	}
	if len(n.cfg.Addr) == 0 {
		return nil, errors.New("no clickhouse address")
	}
	var errs []error
	for _, addr := range n.cfg.Addr {
		c, err := n.dialAddr(ctx, addr)
		if err == nil {
			return c, nil
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	return nil, errors.Join(errs...)
}

func (n *Native) dialAddr(ctx context.Context, addr string) (*nconn, error) {
	timeout := n.cfg.DialTimeout.D()
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	dctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var conn net.Conn
	var err error
	d := &net.Dialer{}
	if n.tls != nil {
		td := &tls.Dialer{NetDialer: d, Config: n.tls}
		conn, err = td.DialContext(dctx, "tcp", addr)
	} else {
		conn, err = d.DialContext(dctx, "tcp", addr)
	}
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	c := &nconn{conn: conn, r: proto.NewReader(conn), w: bufio.NewWriterSize(conn, 64<<10),
		lz4: compress.NewWriter(compress.LevelZero, compress.LZ4)}
	_ = conn.SetDeadline(time.Now().Add(timeout))
	if err := c.handshake(n.cfg.Username, n.cfg.Password); err != nil {
		c.close()
		return nil, fmt.Errorf("handshake with %s: %w", addr, err)
	}
	_ = conn.SetDeadline(time.Time{})
	return c, nil
}

func (c *nconn) handshake(user, password string) error {
	c.pkt.Reset()
	proto.ClientHello{Name: clientName, Major: clientMajor, Minor: clientMin, ProtocolVersion: clientRevision,
		User: user, Password: password}.Encode(&c.pkt)
	if err := c.send(); err != nil {
		return err
	}
	code, err := c.r.UVarInt()
	if err != nil {
		return err
	}
	switch proto.ServerCode(code) {
	case proto.ServerCodeHello:
	case proto.ServerCodeException:
		return c.exception()
	default:
		return fmt.Errorf("unexpected packet %d instead of the server's hello", code)
	}
	var hello proto.ServerHello
	if err := hello.DecodeAware(c.r, clientRevision); err != nil {
		return fmt.Errorf("server hello: %w", err)
	}
	if hello.Revision < revClientInfo {
		return fmt.Errorf("server revision %d is too old", hello.Revision)
	}
	c.revision = min(clientRevision, hello.Revision)
	if c.revision >= revAddendum {
		c.pkt.PutString("") // quota key
		return c.send()
	}
	return nil
}

// send writes and flushes c.pkt.
func (c *nconn) send() error {
	if _, err := c.w.Write(c.pkt.Buf); err != nil {
		return err
	}
	c.pkt.Reset()
	return c.w.Flush()
}

// putQuery encodes the query packet as clickhouse-go does for every revision (ch-go's
// encoder omits the client info below 54420).
func (c *nconn) putQuery(n *Native, body string) {
	b := &c.pkt
	proto.ClientCodeQuery.Encode(b)
	b.PutString("") // query id: the server makes one
	if c.revision >= revClientInfo {
		b.PutByte(1)    // initial query
		b.PutString("") // initial user
		b.PutString("") // initial query id
		b.PutString("0.0.0.0:0")
		if c.revision >= revQueryStartTime {
			b.PutInt64(0)
		}
		b.PutByte(1) // interface: TCP
		b.PutString(n.user)
		b.PutString(n.hostname)
		b.PutString(clientName)
		b.PutUVarInt(clientMajor)
		b.PutUVarInt(clientMin)
		b.PutUVarInt(clientRevision)
		if c.revision >= revQuotaKeyInInfo {
			b.PutString("")
		}
		if c.revision >= revDistributedDepth {
			b.PutUVarInt(0)
		}
		if c.revision >= revVersionPatch {
			b.PutUVarInt(0)
		}
		if c.revision >= revOpenTelemetry {
			b.PutByte(0) // no trace context
		}
		if c.revision >= revParallelReplicas {
			b.PutUVarInt(0)
			b.PutUVarInt(0)
			b.PutUVarInt(0)
		}
	}
	for _, s := range n.settings {
		b.PutString(s.Key)
		if c.revision < revSettingsAsStrings {
			b.PutUVarInt(uint64(s.Value))
			continue
		}
		b.PutUVarInt(0) // flags: not important, not custom
		b.PutString(strconv.Itoa(s.Value))
	}
	b.PutString("") // end of settings
	if c.revision >= revInterserverSecret {
		b.PutString("")
	}
	b.PutUVarInt(stageComplete)
	b.PutBool(true) // compression
	b.PutString(body)
	if c.revision >= revParameters {
		b.PutString("") // end of parameters
	}
	// No external tables: an empty data block ends them.
	c.putDataHeader()
	c.block.Reset()
	proto.Block{}.EncodeAware(&c.block, c.revision)
}

// putDataHeader starts a data packet in c.pkt: its code and the (empty) table name; the block
// follows compressed.
func (c *nconn) putDataHeader() {
	proto.ClientCodeData.Encode(&c.pkt)
	proto.ClientData{}.EncodeAware(&c.pkt, c.revision)
}

// frame compresses the block bytes into frames while at least frameSize of them (all of them
// when final) are waiting, and writes the frames.
func (c *nconn) frame(final bool) error {
	done := 0
	for len(c.block.Buf)-done >= frameSize || (final && done < len(c.block.Buf)) {
		end := min(done+frameSize, len(c.block.Buf))
		if err := c.lz4.Compress(c.block.Buf[done:end]); err != nil {
			return err
		}
		if _, err := c.w.Write(c.lz4.Data); err != nil {
			return err
		}
		done = end
	}
	if done > 0 {
		c.block.Buf = c.block.Buf[:copy(c.block.Buf, c.block.Buf[done:])]
	}
	return nil
}

// flushPkt writes the pending packet bytes (uncompressed) before framed block bytes.
func (c *nconn) flushPkt() error {
	if len(c.pkt.Buf) == 0 {
		return nil
	}
	_, err := c.w.Write(c.pkt.Buf)
	c.pkt.Reset()
	return err
}

// endData writes the empty data block that ends the insert's data.
func (c *nconn) endData() error {
	c.putDataHeader()
	if err := c.flushPkt(); err != nil {
		return err
	}
	c.block.Reset()
	proto.Block{}.EncodeAware(&c.block, c.revision)
	if err := c.frame(true); err != nil {
		return err
	}
	return c.w.Flush()
}

// readHeader reads the server's answer to an INSERT query up to the block that describes the
// columns.
func (c *nconn) readHeader() error {
	for {
		code, err := c.r.UVarInt()
		if err != nil {
			return err
		}
		switch p := proto.ServerCode(code); p {
		case proto.ServerCodeData:
			if err := c.readBlock(&c.header, true); err != nil {
				return fmt.Errorf("insert header: %w", err)
			}
			return nil
		default:
			if done, err := c.other(p); err != nil || done {
				if err == nil {
					err = errors.New("the server ended the insert before asking for data")
				}
				return err
			}
		}
	}
}

// readEnd reads the server's packets until the end of the insert.
func (c *nconn) readEnd() error {
	for {
		code, err := c.r.UVarInt()
		if err != nil {
			return err
		}
		p := proto.ServerCode(code)
		if p == proto.ServerCodeData {
			var skip proto.Results
			if err := c.readBlock(skip.Auto(), true); err != nil {
				return err
			}
			continue
		}
		if done, err := c.other(p); err != nil || done {
			return err
		}
	}
}

// other handles a packet that is neither the header nor data; done is true at the end of
// the stream.
func (c *nconn) other(p proto.ServerCode) (done bool, err error) {
	switch p {
	case proto.ServerCodeEndOfStream:
		return true, nil
	case proto.ServerCodeException:
		return true, c.exception()
	case proto.ServerCodeProgress:
		var v proto.Progress
		return false, v.DecodeAware(c.r, c.revision)
	case proto.ServerCodeProfile:
		var v proto.Profile
		return false, v.DecodeAware(c.r, c.revision)
	case proto.ServerCodeTableColumns:
		var v proto.TableColumns
		return false, v.DecodeAware(c.r, c.revision)
	case proto.ServerCodeLog, proto.ServerProfileEvents, proto.ServerCodeTotals, proto.ServerCodeExtremes:
		var skip proto.Results
		return false, c.readBlock(skip.Auto(), p.Compressible())
	default:
		return true, fmt.Errorf("unexpected packet %d from the server", p)
	}
}

func (c *nconn) readBlock(into proto.Result, compressed bool) error {
	if _, err := c.r.Str(); err != nil { // temporary table name
		return err
	}
	if compressed {
		c.r.EnableCompression()
		defer c.r.DisableCompression()
	}
	var b proto.Block
	return b.DecodeBlock(c.r, c.revision, into)
}

// exception reads a server exception (and its nested ones) as clickhouse-go's
// *clickhouse.Exception, so that callers classify errors of both clients alike.
func (c *nconn) exception() error {
	var e proto.Exception
	if err := e.DecodeAware(c.r, c.revision); err != nil {
		return fmt.Errorf("reading an exception: %w", err)
	}
	// DecodeAware drops the "has nested" flag: a nested exception would follow on the wire,
	// which is why a connection is closed after an exception rather than reused.
	return &clickhouse.Exception{Code: int32(e.Code), Name: e.Name, Message: e.Message, StackTrace: e.Stack}
}

// column is one column of the block being written: its name, its ClickHouse type as the
// schema declares it, and how to write its rows.
type column struct {
	name, typ string
	encode    func(b *proto.Buffer)
}

// insert runs one INSERT of rows: query is "INSERT INTO t (c1, c2, …)", cols its columns in
// that order. Every column's type is checked against the server's before anything is sent:
// a column the server declares with another type fails with a *BuildError.
func (n *Native) insert(ctx context.Context, query string, rows int, cols []column) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	c, pooled, err := n.get(ctx)
	if err != nil {
		return err
	}
	err = n.insertOn(ctx, c, query, rows, cols)
	var stale *staleError
	if pooled && errors.As(err, &stale) && ctx.Err() == nil {
		// An idle connection the server or the network closed meanwhile fails before any
		// row is sent: once more on a new one, which does not duplicate anything.
		if c, err = n.dial(ctx); err != nil {
			return err
		}
		err = n.insertOn(ctx, c, query, rows, cols)
	}
	if errors.As(err, &stale) {
		return stale.err
	}
	return err
}

// staleError is a network error before the server asked for the insert's data: no row was
// sent.
type staleError struct{ err error }

func (e *staleError) Error() string { return e.err.Error() }
func (e *staleError) Unwrap() error { return e.err }

// insertOn runs the insert on c, which it returns to the pool after a clean end and closes
// otherwise.
func (n *Native) insertOn(ctx context.Context, c *nconn, query string, rows int, cols []column) (err error) {
	ok := false
	defer func() {
		if ok {
			n.put(c)
		} else {
			c.close()
		}
	}()
	// A cancelled ctx closes the connection: a blocked read or write returns at once.
	stop := context.AfterFunc(ctx, func() { _ = c.conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	deadline, has := ctx.Deadline()
	if !has {
		deadline = time.Now().Add(n.cfg.QueryTimeout.D() + 10*time.Second)
	}
	_ = c.conn.SetDeadline(deadline)
	defer func() { _ = c.conn.SetDeadline(time.Time{}) }()

	sent := false
	err = c.run(n, query+" VALUES", rows, cols, &sent)
	var ex *clickhouse.Exception
	var be *BuildError
	switch {
	case err == nil:
		ok = true
		return nil
	case errors.As(err, &ex) || errors.As(err, &be):
		return err
	case ctx.Err() != nil:
		return ctx.Err()
	case !sent:
		return &staleError{fmt.Errorf("clickhouse %s: %w", c.conn.RemoteAddr(), err)}
	default:
		return fmt.Errorf("clickhouse %s: %w", c.conn.RemoteAddr(), err)
	}
}

// run is one INSERT on c; sent turns true once the server has asked for the data.
func (c *nconn) run(n *Native, body string, rows int, cols []column, sent *bool) error {
	c.putQuery(n, body)
	if err := c.flushPkt(); err != nil {
		return err
	}
	if err := c.frame(true); err != nil {
		return err
	}
	if err := c.w.Flush(); err != nil {
		return err
	}
	if err := c.readHeader(); err != nil {
		return err
	}
	*sent = true
	// The server lists the columns of the statement, in its order.
	types := make(map[string]string, len(c.header))
	for _, h := range c.header {
		types[h.Name] = string(h.Type)
	}
	if len(c.header) != len(cols) {
		return c.abort(&BuildError{fmt.Errorf("the server expects %d columns, the insert has %d", len(c.header), len(cols))})
	}
	for _, col := range cols {
		got, found := types[col.name]
		switch {
		case !found:
			return c.abort(&BuildError{fmt.Errorf("the server does not expect column %s", col.name)})
		case !sameType(got, col.typ):
			return c.abort(&BuildError{fmt.Errorf("column %s is %s in clickhouse, the insert writes %s", col.name, got, col.typ)})
		}
	}
	if err := c.writeData(rows, cols, types); err != nil {
		return err
	}
	if err := c.endData(); err != nil {
		return err
	}
	return c.readEnd()
}

// writeData writes the data packet of the rows: one block, its columns encoded one at a time
// into LZ4 frames. types are the server's names of the columns' types.
func (c *nconn) writeData(rows int, cols []column, types map[string]string) error {
	c.putDataHeader()
	if err := c.flushPkt(); err != nil {
		return err
	}
	c.block.Reset()
	proto.Block{Info: proto.BlockInfo{BucketNum: -1}, Columns: len(cols), Rows: rows}.EncodeAware(&c.block, c.revision)
	for _, col := range cols {
		c.block.PutString(col.name)
		c.block.PutString(types[col.name])
		if c.revision >= revCustomSerialization {
			c.block.PutBool(false)
		}
		if rows > 0 {
			col.encode(&c.block)
		}
		if err := c.frame(false); err != nil {
			return err
		}
	}
	return c.frame(true)
}

// abort ends an insert whose data cannot be written: an empty block ends the data, and the
// server's answer is read (and dropped, err says why). The connection is closed after it.
func (c *nconn) abort(err error) error {
	_ = c.endData()
	_ = c.readEnd()
	return err
}

// sameType says whether the server's type of a column takes the rows encoded for the
// schema's type: the same type, or DateTime with any time zone for DateTime.
func sameType(server, schema string) bool {
	if server == schema {
		return true
	}
	isDateTime := func(t string) bool {
		return t == "DateTime" || (len(t) > len("DateTime(") && t[:len("DateTime(")] == "DateTime(")
	}
	return isDateTime(server) && isDateTime(schema)
}
