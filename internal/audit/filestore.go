package audit

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// DefaultSegmentBytes is the size at which the file store starts a new segment.
const DefaultSegmentBytes = 64 << 20

// File store layout:
//
//	DIR/log.json                   the log's id and creation time (written once)
//	DIR/lock                       held (flock) by the one process that writes
//	DIR/segments/<first seq>.jsonl records, one JSON line each
//	DIR/checkpoints.jsonl          signed checkpoints, one JSON line each
//	DIR/archive/<first seq>.jsonl  segments moved out of the live log
const (
	logFile         = "log.json"
	lockFile        = "lock"
	segmentsDir     = "segments"
	archiveDir      = "archive"
	checkpointsFile = "checkpoints.jsonl"
	segmentSuffix   = ".jsonl"
)

// FileStore keeps records in append-only segment files. A write returns
// only after fsync, so an acknowledged record survives a crash. Segments
// are never rewritten: a new one starts when the current one reaches its
// size limit or a new UTC day begins (so retention moves whole days), and
// a full segment is made read-only. The one thing undone at open is an
// incomplete last line, which a crash left mid-write and nobody was told
// was written; Log records that it happened.
type FileStore struct {
	dir          string
	logID        string
	segmentBytes int64
	lock         *os.File

	mu        sync.Mutex
	current   *os.File
	currentAt time.Time // time of the current segment's first record
	size      int64     // bytes of the current segment known to be whole
	lastSeq   uint64
	broken    error
	recovered []string
}

type logMeta struct {
	LogID   string    `json:"logID"`
	Created time.Time `json:"created"`
}

// OpenFileStore opens (creating if needed) the log in dir. Only one
// process may hold it: a second gets an error naming the directory.
func OpenFileStore(dir string) (*FileStore, error) {
	s := &FileStore{dir: dir, segmentBytes: DefaultSegmentBytes}
	for _, d := range []string{dir, s.path(segmentsDir), s.path(archiveDir)} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("creating audit directory %s: %w", d, err)
		}
	}
	lock, err := os.OpenFile(s.path(lockFile), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", s.path(lockFile), err)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		lock.Close()
		return nil, fmt.Errorf("audit log %s is in use by another process: %w", dir, err)
	}
	s.lock = lock
	if err := s.open(); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// OpenFileStoreReadOnly opens a copy of a file store to read and verify
// it (an auditor's copy, or the server's while it runs): no lock, no
// repair, no writes.
func OpenFileStoreReadOnly(dir string) (*FileStore, error) {
	s := &FileStore{dir: dir, broken: errors.New("opened read-only")}
	meta, err := readMeta(s.path(logFile))
	if err != nil {
		return nil, err
	}
	s.logID = meta.LogID
	return s, nil
}

// SetSegmentBytes changes the rotation size (tests use small segments).
func (s *FileStore) SetSegmentBytes(n int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.segmentBytes = n
}

func (s *FileStore) path(parts ...string) string {
	return filepath.Join(append([]string{s.dir}, parts...)...)
}

func (s *FileStore) String() string { return "file store " + s.dir }

// LogID is the log's id.
func (s *FileStore) LogID() string { return s.logID }

// Recovered says what open repaired.
func (s *FileStore) Recovered() []string { return s.recovered }

func readMeta(path string) (*logMeta, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading the audit log's identity: %w", err)
	}
	m := &logMeta{}
	if err := json.Unmarshal(b, m); err != nil || m.LogID == "" {
		return nil, fmt.Errorf("reading the audit log's identity %s: not valid (%v)", path, err)
	}
	return m, nil
}

func (s *FileStore) open() error {
	meta, err := readMeta(s.path(logFile))
	if errors.Is(err, os.ErrNotExist) {
		meta = &logMeta{LogID: newLogID(), Created: time.Now().UTC()}
		b, _ := json.Marshal(meta)
		if err := writeFileSync(s.path(logFile), b); err != nil {
			return err
		}
	} else if err != nil {
		return err
	}
	s.logID = meta.LogID

	segs, err := segmentFiles(s.path(segmentsDir))
	if err != nil {
		return err
	}
	if len(segs) == 0 {
		// The archive may hold everything: continue after it.
		archived, err := segmentFiles(s.path(archiveDir))
		if err != nil {
			return err
		}
		if len(archived) > 0 {
			last, _, err := lastRecord(archived[len(archived)-1])
			if err != nil {
				return err
			}
			if last != nil {
				s.lastSeq = last.Seq
			}
		}
		return nil
	}
	path := segs[len(segs)-1]
	if err := s.repairTail(path); err != nil {
		return err
	}
	last, first, err := lastRecord(path)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("opening audit segment %s: %w", path, err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return err
	}
	s.current, s.size = f, st.Size()
	if last != nil {
		s.lastSeq = last.Seq
		s.currentAt = first.Time
	} else if prev := len(segs) - 2; prev >= 0 {
		// An empty newest segment (a crash right after rotation).
		if last, _, err := lastRecord(segs[prev]); err == nil && last != nil {
			s.lastSeq = last.Seq
		}
	}
	return nil
}

// repairTail cuts an incomplete last line off the newest segment: the
// write was interrupted before its fsync returned, so no caller was told
// it succeeded.
func (s *FileStore) repairTail(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("opening audit segment %s: %w", path, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil || st.Size() == 0 {
		return err
	}
	// Find the last newline, reading backwards in blocks.
	end := st.Size()
	buf := make([]byte, 64<<10)
	pos := end
	keep := int64(0)
	for pos > 0 {
		n := min(int64(len(buf)), pos)
		pos -= n
		if _, err := f.ReadAt(buf[:n], pos); err != nil {
			return fmt.Errorf("reading audit segment %s: %w", path, err)
		}
		if i := bytes.LastIndexByte(buf[:n], '\n'); i >= 0 {
			keep = pos + int64(i) + 1
			break
		}
	}
	if keep == end {
		return nil
	}
	if err := f.Truncate(keep); err != nil {
		return fmt.Errorf("cutting the incomplete last record off %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return err
	}
	s.recovered = append(s.recovered, fmt.Sprintf("discarded %d bytes of an incomplete record at the end of %s (a write interrupted by a crash, never acknowledged)", end-keep, filepath.Base(path)))
	return nil
}

// lastRecord reads the last and first records of a segment (nil when empty).
func lastRecord(path string) (last, first *Record, err error) {
	err = scanSegment(path, func(it Item) error {
		if it.Err != nil {
			return fmt.Errorf("%s: %w", it.Where, it.Err)
		}
		if first == nil {
			first = it.Record
		}
		last = it.Record
		return nil
	})
	return last, first, err
}

func newLogID() string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

// segmentFiles lists the segments of dir in order.
func segmentFiles(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("listing audit segments in %s: %w", dir, err)
	}
	type seg struct {
		first uint64
		path  string
	}
	var segs []seg
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), segmentSuffix)
		if !ok || e.IsDir() {
			continue
		}
		first, err := strconv.ParseUint(name, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("audit segment %s: the name is not the segment's first record number", filepath.Join(dir, e.Name()))
		}
		segs = append(segs, seg{first, filepath.Join(dir, e.Name())})
	}
	slices.SortFunc(segs, func(a, b seg) int { return cmpUint(a.first, b.first) })
	out := make([]string, len(segs))
	for i, s := range segs {
		out[i] = s.path
	}
	return out, nil
}

func cmpUint(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func segmentName(first uint64) string { return fmt.Sprintf("%020d%s", first, segmentSuffix) }

// Append writes the records as lines of the current segment and fsyncs.
func (s *FileStore) Append(ctx context.Context, records []*Record) error {
	if len(records) == 0 {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	var buf bytes.Buffer
	for _, r := range records {
		line, err := r.Marshal()
		if err != nil {
			return err
		}
		buf.Write(line)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.broken != nil {
		return fmt.Errorf("audit log %s cannot be written: %w", s.dir, s.broken)
	}
	if records[0].Seq != s.lastSeq+1 {
		return ErrConflict
	}
	if err := s.rotate(records[0]); err != nil {
		return err
	}
	if _, err := s.current.Write(buf.Bytes()); err != nil {
		return s.undo(fmt.Errorf("writing to audit segment %s: %w", s.current.Name(), err))
	}
	if err := s.current.Sync(); err != nil {
		return s.undo(fmt.Errorf("syncing audit segment %s: %w", s.current.Name(), err))
	}
	s.size += int64(buf.Len())
	s.lastSeq = records[len(records)-1].Seq
	return nil
}

// undo cuts a failed write back off, so that the next write starts on a
// whole line; if even that fails the store refuses further writes until
// it is opened again (and repairs its tail).
func (s *FileStore) undo(err error) error {
	if terr := s.current.Truncate(s.size); terr != nil {
		s.broken = fmt.Errorf("%w; cutting the failed write back off: %v", err, terr)
	}
	return err
}

// rotate starts a new segment when the current one is full or from an
// earlier UTC day, or when there is none.
func (s *FileStore) rotate(next *Record) error {
	if s.current != nil && s.size > 0 && s.size < s.segmentBytes && sameDay(s.currentAt, next.Time) {
		return nil
	}
	if s.current != nil && s.size == 0 {
		if s.currentAt.IsZero() {
			s.currentAt = next.Time
		}
		return nil
	}
	path := s.path(segmentsDir, segmentName(next.Seq))
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("starting audit segment %s: %w", path, err)
	}
	if err := syncDir(s.path(segmentsDir)); err != nil {
		f.Close()
		return err
	}
	if s.current != nil {
		old := s.current.Name()
		s.current.Close()
		// A full segment is never written again; saying so in its mode
		// keeps tools and people from appending to it by mistake.
		_ = os.Chmod(old, 0o400)
	}
	s.current, s.size, s.currentAt = f, 0, next.Time
	return nil
}

func sameDay(a, b time.Time) bool {
	ay, am, ad := a.UTC().Date()
	by, bm, bd := b.UTC().Date()
	return ay == by && am == bm && ad == bd
}

// Scan reads the archive's segments, then the live ones.
func (s *FileStore) Scan(ctx context.Context, fn func(Item) error) error {
	var all []string
	for _, d := range []string{archiveDir, segmentsDir} {
		segs, err := segmentFiles(s.path(d))
		if err != nil {
			return err
		}
		all = append(all, segs...)
	}
	return scanSegments(ctx, all, fn)
}

// scanSegments reads segments in order. Only the newest can end
// mid-write; an older one that does was cut.
func scanSegments(ctx context.Context, segs []string, fn func(Item) error) error {
	for i, path := range segs {
		last := i == len(segs)-1
		err := scanSegment(path, func(it Item) error {
			if err := ctx.Err(); err != nil {
				return err
			}
			if errors.Is(it.Err, ErrIncomplete) && !last {
				it.Err = errors.New("a segment ends in the middle of a record")
			}
			return fn(it)
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// Tail reads the live segments that hold records since since (segments
// are days at most), and always the newest that holds any; when there
// are no live segments, the last archived one.
func (s *FileStore) Tail(ctx context.Context, since time.Time, fn func(Item) error) error {
	segs, err := segmentFiles(s.path(segmentsDir))
	if err != nil {
		return err
	}
	if len(segs) == 0 {
		if segs, err = segmentFiles(s.path(archiveDir)); err != nil || len(segs) == 0 {
			return err
		}
		segs = segs[len(segs)-1:]
	}
	from, found := len(segs)-1, false
	for i := len(segs) - 1; i >= 0; i-- {
		last, err := lastLine(segs[i])
		if err != nil {
			return err
		}
		if found && last != nil && last.Time.Before(since) {
			break
		}
		from, found = i, found || last != nil
	}
	return scanSegments(ctx, segs[from:], fn)
}

// lastLine reads the last whole record of a segment from its end (nil
// when it has none, or the last line is not a record: the scan then says
// why).
func lastLine(path string) (*Record, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("opening audit segment %s: %w", path, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	n := min(st.Size(), MaxRecordBytes+1)
	buf := make([]byte, n)
	if _, err := f.ReadAt(buf, st.Size()-n); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("reading audit segment %s: %w", path, err)
	}
	buf = bytes.TrimSuffix(buf, []byte("\n"))
	if i := bytes.LastIndexByte(buf, '\n'); i >= 0 {
		buf = buf[i+1:]
	}
	r, err := ParseRecord(buf)
	if err != nil {
		return nil, nil
	}
	return r, nil
}

// scanSegment calls fn for each line of a segment.
func scanSegment(path string, fn func(Item) error) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("opening audit segment %s: %w", path, err)
	}
	defer f.Close()
	return ReadRecords(f, filepath.Base(path), fn)
}

// ReadRecords reads records written one a line (a segment, or the records
// of an evidence pack) and calls fn for each, naming it "name line N". A
// line that is not a record is passed with Err set; input that ends
// without a newline gives a last item with ErrIncomplete.
func ReadRecords(r io.Reader, name string, fn func(Item) error) error {
	br := bufio.NewReaderSize(r, 64<<10)
	for n := 1; ; n++ {
		line, err := readLine(br)
		if err == io.EOF && len(line) == 0 {
			return nil
		}
		it := Item{Where: fmt.Sprintf("%s line %d", name, n)}
		switch {
		case errors.Is(err, errLineTooLong):
			it.Err = fmt.Errorf("a line of over %d bytes is not a record", MaxRecordBytes)
		case err == io.EOF:
			it.Err = ErrIncomplete
		case err != nil:
			return fmt.Errorf("reading %s: %w", it.Where, err)
		default:
			it.Record, it.Err = ParseRecord(line)
		}
		if ferr := fn(it); ferr != nil {
			return ferr
		}
		if err == io.EOF {
			return nil
		}
	}
}

var errLineTooLong = errors.New("line too long")

// readLine returns one line without its newline, io.EOF with what is left
// when the input ends without one, or errLineTooLong (having skipped the line).
func readLine(br *bufio.Reader) ([]byte, error) {
	var line []byte
	for {
		chunk, err := br.ReadSlice('\n')
		if len(line)+len(chunk) > MaxRecordBytes+1 {
			// Skip to the end of the line.
			for errors.Is(err, bufio.ErrBufferFull) {
				_, err = br.ReadSlice('\n')
			}
			if err != nil && !errors.Is(err, io.EOF) {
				return nil, err
			}
			return nil, errLineTooLong
		}
		line = append(line, chunk...)
		switch {
		case err == nil:
			return line[:len(line)-1], nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		default:
			return line, err
		}
	}
}

type storedCheckpoint struct {
	Checkpoint string `json:"checkpoint"`
}

// AddCheckpoint appends a checkpoint and fsyncs.
func (s *FileStore) AddCheckpoint(_ context.Context, c *Checkpoint) error {
	b, err := json.Marshal(storedCheckpoint{Checkpoint: string(c.Marshal())})
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lock == nil {
		return fmt.Errorf("audit log %s is open read-only", s.dir)
	}
	f, err := os.OpenFile(s.path(checkpointsFile), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("opening %s: %w", s.path(checkpointsFile), err)
	}
	defer f.Close()
	if _, err := f.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("writing checkpoint to %s: %w", s.path(checkpointsFile), err)
	}
	return f.Sync()
}

// Checkpoints reads the kept checkpoints. A line that is not one (an
// interrupted write) is skipped: a checkpoint only ever adds evidence.
func (s *FileStore) Checkpoints(context.Context) ([]*Checkpoint, error) {
	f, err := os.Open(s.path(checkpointsFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []*Checkpoint
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 64<<10)
	for sc.Scan() {
		var sc2 storedCheckpoint
		if json.Unmarshal(sc.Bytes(), &sc2) != nil {
			continue
		}
		if c, err := ParseCheckpoint([]byte(sc2.Checkpoint)); err == nil {
			out = append(out, c)
		}
	}
	return out, sc.Err()
}

// Archive moves whole live segments whose every record is older than
// before into DIR/archive. The newest segment stays.
func (s *FileStore) Archive(ctx context.Context, before time.Time) (*Archived, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lock == nil {
		return nil, fmt.Errorf("audit log %s is open read-only", s.dir)
	}
	segs, err := segmentFiles(s.path(segmentsDir))
	if err != nil {
		return nil, err
	}
	var out *Archived
	for _, path := range segs[:max(len(segs)-1, 0)] {
		if err := ctx.Err(); err != nil {
			return out, err
		}
		last, first, err := lastRecord(path)
		if err != nil {
			return out, fmt.Errorf("reading %s before archiving it: %w", path, err)
		}
		if last == nil || !last.Time.Before(before) {
			break
		}
		dest := s.path(archiveDir, filepath.Base(path))
		if err := os.Rename(path, dest); err != nil {
			return out, fmt.Errorf("moving %s to the archive: %w", path, err)
		}
		for _, d := range []string{s.path(archiveDir), s.path(segmentsDir)} {
			if err := syncDir(d); err != nil {
				return out, err
			}
		}
		if out == nil {
			out = &Archived{First: first.Seq}
		}
		out.Last, out.LastHash = last.Seq, last.Hash
		out.Where = append(out.Where, filepath.Join(archiveDir, filepath.Base(path)))
	}
	return out, nil
}

// Close releases the lock.
func (s *FileStore) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	if s.current != nil {
		errs = append(errs, s.current.Close())
		s.current = nil
	}
	if s.lock != nil {
		errs = append(errs, s.lock.Close())
		s.lock = nil
	}
	s.broken = errors.New("closed")
	return errors.Join(errs...)
}

func writeFileSync(path string, b []byte) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	return syncDir(filepath.Dir(path))
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("syncing directory %s: %w", dir, err)
	}
	return nil
}

// Dir is the store's directory.
func (s *FileStore) Dir() string { return s.dir }
