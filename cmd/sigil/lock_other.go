//go:build !unix

package main

// lockDir is a no-op where flock is not available.
func lockDir(dir, name string) (release func(), err error) {
	return func() {}, nil
}
