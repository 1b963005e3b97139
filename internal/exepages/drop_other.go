//go:build !linux

package exepages

import "time"

// supported says Drop does something on this system.
const supported = false

// Drop does nothing where /proc/self/smaps does not exist.
func Drop(Readahead) (Result, error) { return Result{}, nil }

// Unmap does nothing where /proc/self/smaps does not exist.
func Unmap() (Result, error) { return Result{Unmapped: true}, nil }

// ProcessCPU returns 0 on this system.
func ProcessCPU() time.Duration { return 0 }
