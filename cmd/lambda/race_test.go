//go:build race

package main

// raceEnabled: the race detector slows the import test's million lines five-fold; under it the
// test imports fewer (`make test` runs it again without the detector, at a million).
const raceEnabled = true
