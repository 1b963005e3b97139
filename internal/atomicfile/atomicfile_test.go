package atomicfile

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
)

func TestWriteFileReplacesContentAndSetsMode(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "key.pem")
	if err := os.WriteFile(path, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := WriteFile(path, []byte("new"), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(path)
	if err != nil || string(got) != "new" {
		t.Fatalf("content %q, %v; want \"new\"", got, err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, want 0600", fi.Mode().Perm())
	}
	assertOnly(t, dir, "key.pem")
}

func TestModeIsIndependentOfUmask(t *testing.T) {
	old := syscall.Umask(0o077)
	defer syscall.Umask(old)
	path := filepath.Join(t.TempDir(), "bundle.pem")
	if err := WriteFile(path, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o644 {
		t.Fatalf("mode %v under umask 077, want 0644", fi.Mode().Perm())
	}
}

// The temporary file already has its final mode while it is being
// written, before the rename makes it visible under path.
func TestModeIsSetBeforeRename(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "svid.key")
	var modeDuringWrite os.FileMode
	err := WriteFunc(path, 0o600, func(w io.Writer) error {
		f, ok := w.(*os.File)
		if !ok {
			return fmt.Errorf("writer is %T, want the temporary *os.File", w)
		}
		if f.Name() == path {
			return errors.New("writing to the target itself, not a temporary file")
		}
		fi, err := f.Stat()
		if err != nil {
			return err
		}
		modeDuringWrite = fi.Mode().Perm()
		if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("target visible before the rename: %v", err)
		}
		_, err = w.Write([]byte("secret"))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if modeDuringWrite != 0o600 {
		t.Fatalf("temporary file mode %v while written, want 0600", modeDuringWrite)
	}
}

func TestFailedWriteLeavesTargetAndNoTemporaryFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state.json")
	if err := os.WriteFile(path, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	boom := errors.New("stream broke")
	err := WriteFunc(path, 0o600, func(w io.Writer) error {
		w.Write([]byte("half"))
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("err %v, want the fill error", err)
	}
	got, _ := os.ReadFile(path)
	if string(got) != "old" {
		t.Fatalf("target is %q after a failed write, want \"old\"", got)
	}
	assertOnly(t, dir, "state.json")
}

func TestMissingDirectoryIsAClearError(t *testing.T) {
	path := filepath.Join(t.TempDir(), "no", "such", "file")
	err := WriteFile(path, []byte("x"), 0o600)
	if err == nil {
		t.Fatal("write into a missing directory succeeded")
	}
	if !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("err %v, want it to wrap ErrNotExist", err)
	}
	if want := "atomicfile: writing " + path + ": "; len(err.Error()) < len(want) || err.Error()[:len(want)] != want {
		t.Fatalf("err %q, want prefix %q", err, want)
	}
}

// Writers racing on one path each replace it whole: a reader at any
// moment sees one writer's complete content, and no temporary file is
// left behind.
func TestConcurrentWritersNeverTear(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "cluster-bundle.pem")
	const writers, rounds, size = 8, 20, 64 << 10
	contents := make([][]byte, writers)
	for i := range contents {
		contents[i] = bytes.Repeat([]byte{byte('a' + i)}, size)
	}
	if err := WriteFile(path, contents[0], 0o644); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	readErr := make(chan error, 1)
	go func() {
		defer close(readErr)
		for {
			select {
			case <-stop:
				return
			default:
			}
			got, err := os.ReadFile(path)
			if err != nil {
				readErr <- err
				return
			}
			if len(got) != size || !bytes.Equal(got, bytes.Repeat(got[:1], size)) {
				readErr <- fmt.Errorf("torn read: %d bytes starting %q", len(got), got[:min(len(got), 8)])
				return
			}
		}
	}()
	var wg sync.WaitGroup
	for i := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range rounds {
				if err := WriteFile(path, contents[i], 0o644); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	if err := <-readErr; err != nil {
		t.Fatal(err)
	}
	assertOnly(t, dir, "cluster-bundle.pem")
}

func TestRenameMovesStagedFile(t *testing.T) {
	dir := t.TempDir()
	staged, final := filepath.Join(dir, "svid.pem.new"), filepath.Join(dir, "svid.pem")
	if err := WriteFile(staged, []byte("cert"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := Rename(staged, final); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(final)
	if err != nil || string(got) != "cert" {
		t.Fatalf("content %q, %v", got, err)
	}
	assertOnly(t, dir, "svid.pem")
	if err := Rename(staged, final); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("renaming a missing file: %v, want ErrNotExist", err)
	}
}

func assertOnly(t *testing.T, dir string, names ...string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range ents {
		got = append(got, e.Name())
	}
	if fmt.Sprint(got) != fmt.Sprint(names) {
		t.Fatalf("directory holds %v, want %v", got, names)
	}
}
