//go:build !linux

package workloadapi

import (
	"errors"
	"net"
)

var errUnsupported = errors.New("workload API peer attestation is only supported on Linux")

func peerFromConn(net.Conn, func(int32) (uint64, error)) (*PeerInfo, error) {
	return nil, errUnsupported
}

func (p *PeerInfo) alive(func(int32) (uint64, error)) error { return errUnsupported }

func (p *PeerInfo) close() {}

func procStartTime(int32) (uint64, error) { return 0, errUnsupported }
