//go:build !unix

package offheap

import "errors"

// canMap is false: every allocation is an ordinary Go slice.
const canMap = false

func mmap(int) ([]byte, error) { return nil, errors.New("offheap: no mmap on this system") }

func munmap([]byte) error { return nil }

func pageSize() int { return 4096 }
