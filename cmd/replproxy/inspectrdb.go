package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"sort"

	"github.com/hdt3213/rdb/model"
	"github.com/hdt3213/rdb/parser"

	"github.com/replproxy/replproxy/rdbmeta"
)

// inspectRDB prints what the proxy itself reads, then the key counts from
// hdt3213/rdb, whose pinned version stops at formats and opcodes newer
// than it knows; that is reported, not an error, since the proxy relays
// such RDBs all the same.
func inspectRDB(w io.Writer, path string) error {
	info, err := rdbmeta.ReadFile(path)
	if info.Magic == "" {
		return err
	}
	fmt.Fprintf(w, "header %s (known format: %v)\n", info.Header(), info.Known)
	fmt.Fprintf(w, "producer %s\n", info.Producer())
	keys := make([]string, 0, len(info.Aux))
	for k := range info.Aux {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(w, "aux %s=%s\n", k, info.Aux[k])
	}
	fmt.Fprintf(w, "crc64 verified: %v\n", info.CRCChecked)
	if err != nil {
		return err
	}
	counts, perr := countKeys(path)
	if perr != nil {
		fmt.Fprintf(w, "keys: not counted, hdt3213/rdb cannot parse this RDB: %v\n", perr)
		return nil
	}
	dbs := make([]int, 0, len(counts))
	for db := range counts {
		dbs = append(dbs, db)
	}
	sort.Ints(dbs)
	for _, db := range dbs {
		fmt.Fprintf(w, "db%d keys=%d\n", db, counts[db])
	}
	return nil
}

func countKeys(path string) (map[int]int, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	counts := map[int]int{}
	err = parser.NewDecoder(bufio.NewReader(f)).Parse(func(o model.RedisObject) bool {
		counts[o.GetDBIndex()]++
		return true
	})
	return counts, err
}
