package ledger

// The SQL of the speed rollups' rule, for the tests that run it on chDB.
var (
	RollupsSQL = rollupsSQL
	TouchedSQL = touchedSQL
)
