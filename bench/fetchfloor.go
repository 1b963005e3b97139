package main

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/protobuf/proto"
)

var floorFetchServer = flag.String("floor-fetch-server", "",
	"internal: answer FetchX509SVID on this unix socket from a minimal HTTP/2 responder (the floor of any server)")

// The fetch floor is what the fetch client costs against a server that
// does as little as HTTP/2 allows: a minimal responder that reads each
// connection's frames in one goroutine and, on a FetchX509SVID request,
// writes response headers and message (encoded once, at start) in one
// write from that same goroutine. There is no gRPC server, no goroutine
// hand-off, no attestation, no header check. No server can answer the
// same client faster on the same machine, so the cached fetch's tail can
// be read beside it: when the floor's p99 is above a goal, no server
// meets that goal on that machine with that client.
//
// It is a measuring instrument, not a server to deploy: it answers only
// FetchX509SVID (any other method gets UNIMPLEMENTED), never ends a
// stream (the client cancels), and keeps to the client's flow-control
// window by failing the connection, loudly, where it would have to wait.

const floorFetchPath = "/SpiffeWorkloadAPI/FetchX509SVID"

// floorFrames are the fixed frames' payloads of the floor's answers.
type floorFrames struct {
	okHeaders    []byte // HPACK: :status 200, content-type application/grpc
	message      []byte // gRPC length-prefixed X509SVIDResponse
	unimplHeader []byte // HPACK: trailers-only UNIMPLEMENTED
}

func newFloorFrames() (*floorFrames, error) {
	resp, err := rawFetchResponse()
	if err != nil {
		return nil, err
	}
	msg, err := proto.Marshal(resp)
	if err != nil {
		return nil, err
	}
	// Never-indexed literals and static-table entries only: a block that
	// leaves the client's dynamic table alone can be written again and
	// again.
	block := func(fields ...hpack.HeaderField) []byte {
		var b bytes.Buffer
		enc := hpack.NewEncoder(&b)
		for _, f := range fields {
			f.Sensitive = true
			_ = enc.WriteField(f)
		}
		return b.Bytes()
	}
	f := &floorFrames{
		okHeaders: block(hpack.HeaderField{Name: ":status", Value: "200"},
			hpack.HeaderField{Name: "content-type", Value: "application/grpc"}),
		unimplHeader: block(hpack.HeaderField{Name: ":status", Value: "200"},
			hpack.HeaderField{Name: "content-type", Value: "application/grpc"},
			hpack.HeaderField{Name: "grpc-status", Value: "12"}),
		message: make([]byte, 5+len(msg)),
	}
	binary.BigEndian.PutUint32(f.message[1:5], uint32(len(msg)))
	copy(f.message[5:], msg)
	return f, nil
}

// serveFloorFetch is the -floor-fetch-server process: it answers
// FetchX509SVID on socket until killed.
func serveFloorFetch(socket string) error {
	frames, err := newFloorFrames()
	if err != nil {
		return err
	}
	l, err := net.Listen("unix", socket)
	if err != nil {
		return err
	}
	return frames.serveListener(l)
}

// serveListener answers the connections of l until it fails.
func (frames *floorFrames) serveListener(l net.Listener) error {
	for {
		c, err := l.Accept()
		if err != nil {
			return err
		}
		go func() {
			// A client that exits mid-write is not an error of the floor.
			if err := frames.serve(c); err != nil && !errors.Is(err, io.EOF) &&
				!errors.Is(err, syscall.EPIPE) && !errors.Is(err, syscall.ECONNRESET) {
				fmt.Fprintln(os.Stderr, "floor fetch server:", err)
			}
		}()
	}
}

// serve answers one client connection.
func (f *floorFrames) serve(c net.Conn) error {
	defer c.Close()
	br := bufio.NewReaderSize(c, 16<<10)
	bw := bufio.NewWriterSize(c, 16<<10)
	preface := make([]byte, len(http2.ClientPreface))
	if _, err := io.ReadFull(br, preface); err != nil {
		return err
	}
	if string(preface) != http2.ClientPreface {
		return errors.New("not an HTTP/2 client preface")
	}
	fr := http2.NewFramer(bw, br)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	fr.MaxHeaderListSize = 16 << 10
	if err := fr.WriteSettings(); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	const defaultWindow = 65535
	connWindow := int64(defaultWindow) // what the client lets us send
	streamWindow := int64(defaultWindow)
	var unacked uint32 // request bytes received, not yet given back
	paths := map[uint32]string{}
	answer := func(id uint32) error {
		path := paths[id]
		delete(paths, id)
		if path != floorFetchPath {
			return fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: f.unimplHeader, EndHeaders: true, EndStream: true})
		}
		n := int64(len(f.message))
		if n > connWindow || n > streamWindow {
			return fmt.Errorf("response of %d bytes exceeds the client's flow-control window (connection %d, stream %d)", n, connWindow, streamWindow)
		}
		connWindow -= n
		if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: f.okHeaders, EndHeaders: true}); err != nil {
			return err
		}
		return fr.WriteData(id, false, f.message)
	}
	for {
		frame, err := fr.ReadFrame()
		if err != nil {
			return err
		}
		switch frame := frame.(type) {
		case *http2.SettingsFrame:
			if !frame.IsAck() {
				if v, ok := frame.Value(http2.SettingInitialWindowSize); ok {
					streamWindow = int64(v)
				}
				err = fr.WriteSettingsAck()
			}
		case *http2.PingFrame:
			if !frame.IsAck() {
				err = fr.WritePing(true, frame.Data)
			}
		case *http2.WindowUpdateFrame:
			if frame.StreamID == 0 {
				connWindow += int64(frame.Increment)
			}
		case *http2.MetaHeadersFrame:
			paths[frame.StreamID] = frame.PseudoValue("path")
			if len(paths) > 1000 {
				return errors.New("more than 1,000 open requests")
			}
			if frame.StreamEnded() {
				err = answer(frame.StreamID)
			}
		case *http2.DataFrame:
			unacked += frame.Length
			if unacked >= defaultWindow/4 {
				err = fr.WriteWindowUpdate(0, unacked)
				unacked = 0
			}
			if err == nil && frame.StreamEnded() {
				err = answer(frame.StreamID)
			}
		case *http2.RSTStreamFrame:
			delete(paths, frame.StreamID)
		case *http2.GoAwayFrame:
			return bw.Flush()
		}
		if err != nil {
			return err
		}
		// Write once per batch of frames read.
		if br.Buffered() == 0 {
			if err := bw.Flush(); err != nil {
				return err
			}
		}
	}
}
