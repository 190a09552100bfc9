package ledger

// The SQL of the speed rollups' and rest rollups' rules, for the tests that run it on chDB.
var (
	RollupsSQL = rollupsSQL
	TouchedSQL = touchedSQL
	RestsSQL   = restsSQL
)
