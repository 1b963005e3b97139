package tpm

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"sync"
)

// channel is the TPM command channel of a Store: the configured device,
// opened on the first command after each close. The TPM library closes
// its channel at the end of every operation and reuses the same value for
// the next one, so the channel must reopen; without it the library would
// open the system's default TPM instead of the configured device for
// loading keys and signing. After shut it refuses to open again.
type channel struct {
	path string

	mu       sync.Mutex
	rwc      io.ReadWriteCloser
	emu      bool // rwc is a connection to a software TPM, closed after each response
	shutDown bool
}

// Write sends a command, opening the device first if needed.
func (c *channel) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.shutDown {
		return 0, errClosedReason
	}
	if c.rwc == nil {
		rwc, emu, err := openDevice(c.path)
		if err != nil {
			return 0, fmt.Errorf("opening TPM device %s: %w", c.path, err)
		}
		c.rwc, c.emu = rwc, emu
	}
	return c.rwc.Write(p)
}

// Read reads a response.
func (c *channel) Read(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.rwc == nil {
		return 0, errors.New("TPM device not open")
	}
	n, err := c.rwc.Read(p)
	if c.emu {
		// A software TPM answers one command per connection.
		c.rwc.Close()
		c.rwc = nil
	}
	return n, err
}

// openDevice opens a character device, or connects to a software TPM's
// unix socket (emu).
func openDevice(path string) (rwc io.ReadWriteCloser, emu bool, err error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, false, err
	}
	switch m := fi.Mode(); {
	case m&fs.ModeCharDevice != 0:
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		return f, false, err
	case m&fs.ModeSocket != 0:
		conn, err := net.Dial("unix", path)
		return conn, true, err
	default:
		return nil, false, fmt.Errorf("%s is neither a character device nor a unix socket", path)
	}
}

// Close closes the device; the next Write opens it again.
func (c *channel) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closeLocked()
}

func (c *channel) closeLocked() error {
	if c.rwc == nil {
		return nil
	}
	rwc := c.rwc
	c.rwc = nil
	return rwc.Close()
}

// MeasurementLog returns no log: the key manager attests nothing.
func (c *channel) MeasurementLog() ([]byte, error) { return nil, nil }

// shut closes the device for good.
func (c *channel) shut() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.shutDown = true
	return c.closeLocked()
}
