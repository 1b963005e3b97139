package offheap

import "syscall"

// release drops the pages of b, page-aligned, from the process
// (private anonymous memory reads as zeros after).
func release(b []byte) error { return syscall.Madvise(b, syscall.MADV_DONTNEED) }
