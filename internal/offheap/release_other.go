//go:build !linux

package offheap

// release keeps the pages elsewhere than Linux (Release is a hint).
func release([]byte) error { return nil }
