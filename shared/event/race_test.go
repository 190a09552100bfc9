//go:build race

package event

// raceEnabled thins the scanner's mutation test under the race detector (make test), which
// makes it about ten times slower; plain go test runs every mutation.
const raceEnabled = true
