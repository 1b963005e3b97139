//go:build unix

package offheap

import "syscall"

// canMap is true: allocations of MinMapped bytes or more are mapped.
const canMap = true

// mmap maps n bytes (rounded up to pages) of private, anonymous,
// zeroed memory.
func mmap(n int) ([]byte, error) {
	return syscall.Mmap(-1, 0, n, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANON)
}

// munmap unmaps b, a slice mmap returned (same length).
func munmap(b []byte) error { return syscall.Munmap(b) }

func pageSize() int { return syscall.Getpagesize() }
