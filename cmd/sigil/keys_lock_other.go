//go:build !unix

package main

// lockStoppedServer cannot tell whether a server runs where flock is not
// available: the operator must have stopped it.
func lockStoppedServer(dataDir string) (release func(), err error) {
	return func() {}, nil
}
