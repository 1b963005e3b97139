// Command svidconsumer stands for software that reads its SVID from files
// (`sigil svid watch -write DIR -exec svidconsumer -- RECORD DIR`). At
// start it reads DIR's files, checks that the key matches the certificate,
// that the chain verifies against bundle.pem and that the JWT-SVID file
// holds a token, and appends a "start" line (JSON) to RECORD. Until
// SIGTERM it keeps reading the files and counts any it finds half written
// or mismatched; on SIGTERM it appends a "stop" line with those counts.
package main

import (
	"crypto"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Record is one line of RECORD.
type Record struct {
	Event    string `json:"event"` // start or stop
	PID      int    `json:"pid"`
	Serial   string `json:"serial,omitempty"`
	SPIFFEID string `json:"spiffe_id,omitempty"`
	ChainLen int    `json:"chain_len,omitempty"`
	JWT      bool   `json:"jwt,omitempty"`
	Error    string `json:"error,omitempty"`
	Reads    int    `json:"reads,omitempty"`
	BadReads int    `json:"bad_reads,omitempty"`
	BadError string `json:"bad_error,omitempty"`
}

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: svidconsumer RECORD DIR")
		os.Exit(2)
	}
	record, dir := os.Args[1], os.Args[2]
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)

	r := Record{Event: "start", PID: os.Getpid()}
	leaf, chainLen, err := check(dir, dir)
	if err == nil {
		r.Serial = leaf.SerialNumber.Text(16)
		r.ChainLen = chainLen
		if len(leaf.URIs) == 1 {
			r.SPIFFEID = leaf.URIs[0].String()
		}
		r.JWT, err = hasJWT(dir)
	}
	if err != nil {
		r.Error = err.Error()
	}
	write(record, r)

	stop := Record{Event: "stop", PID: os.Getpid()}
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-term:
			write(record, stop)
			return
		case <-tick.C:
		}
		stop.Reads++
		// Through one resolution of current/: a matching pair.
		ver, err := os.Readlink(filepath.Join(dir, "current"))
		if err == nil {
			_, _, err = check(dir, filepath.Join(dir, ver))
			if errors.Is(err, os.ErrNotExist) {
				err = nil // rotated twice while reading: start over
			}
		}
		// Through the top-level names: each file whole.
		if err == nil {
			err = whole(dir)
		}
		if err != nil {
			stop.BadReads++
			stop.BadError = err.Error()
		}
	}
}

// check reads svid.pem, svid.key and bundle.pem from files (the
// directory the key and certificate are read from) and verifies them.
func check(dir, files string) (*x509.Certificate, int, error) {
	chain, err := certs(filepath.Join(files, "svid.pem"))
	if err != nil {
		return nil, 0, err
	}
	key, err := privateKey(filepath.Join(files, "svid.key"))
	if err != nil {
		return nil, 0, err
	}
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(chain[0].PublicKey) {
		return nil, 0, errors.New("svid.key does not match svid.pem")
	}
	bundle, err := certs(filepath.Join(files, "bundle.pem"))
	if err != nil {
		return nil, 0, err
	}
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	for _, c := range bundle {
		roots.AddCert(c)
	}
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	if _, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return nil, 0, fmt.Errorf("svid.pem does not verify against bundle.pem: %w", err)
	}
	return chain[0], len(chain), nil
}

func whole(dir string) error {
	for _, n := range []string{"svid.pem", "bundle.pem"} {
		if _, err := certs(filepath.Join(dir, n)); err != nil {
			return err
		}
	}
	if _, err := privateKey(filepath.Join(dir, "svid.key")); err != nil {
		return err
	}
	_, err := hasJWT(dir)
	return err
}

func certs(path string) ([]*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		out = append(out, c)
	}
	if len(out) == 0 || strings.TrimSpace(string(b)) != "" {
		return nil, fmt.Errorf("%s is not whole PEM certificates", path)
	}
	return out, nil
}

func privateKey(path string) (crypto.Signer, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	blk, rest := pem.Decode(b)
	if blk == nil || strings.TrimSpace(string(rest)) != "" {
		return nil, fmt.Errorf("%s is not one PEM block", path)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("%s: not a signing key", path)
	}
	return s, nil
}

// hasJWT reports whether a jwt_*.token file holds a whole token.
func hasJWT(dir string) (bool, error) {
	files, _ := filepath.Glob(filepath.Join(dir, "jwt_*.token"))
	if len(files) == 0 {
		return false, nil
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return false, err
		}
		if t := strings.TrimSpace(string(b)); strings.Count(t, ".") != 2 || !strings.HasSuffix(string(b), "\n") {
			return false, fmt.Errorf("%s is not a whole JWT", f)
		}
	}
	return true, nil
}

func write(path string, r Record) {
	b, _ := json.Marshal(r)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer f.Close()
	f.Write(append(b, '\n'))
}
