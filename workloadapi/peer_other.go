//go:build !linux

package workloadapi

import (
	"errors"
	"net"

	"github.com/sigil-id/sigil/internal/procfs"
)

var errUnsupported = errors.New("workload API peer attestation is only supported on Linux")

func peerFromConn(net.Conn, *procReader) (*PeerInfo, error) {
	return nil, errUnsupported
}

func (p *PeerInfo) alive(*procReader) error { return errUnsupported }

func (p *PeerInfo) close() {
	p.mu.Lock()
	release := p.release
	p.release = nil
	p.mu.Unlock()
	if release != nil {
		release()
	}
}

func procStartTime(*PeerInfo) (uint64, error) { return 0, errUnsupported }

func pinnedStartTime(*PeerInfo) (uint64, error) { return 0, errUnsupported }

func pidStartTime(int32) (uint64, error) { return 0, errUnsupported }

func procExe(*PeerInfo) (exeID, error) { return exeID{}, errUnsupported }

func procStatus(*PeerInfo) (procfs.Status, error) { return procfs.Status{}, errUnsupported }
