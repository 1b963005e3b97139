//go:build !linux

package server

import "net"

// peerUID returns -1: peer credentials are read on Linux only.
func peerUID(net.Conn) int { return -1 }
