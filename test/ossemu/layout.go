package ossemu

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
)

// This file plans a synthetic model: which tensors exist, which shard holds
// each, and the exact bytes of every safetensors header, so that the sizes
// of all files add up to ModelSpec.Size exactly.

const (
	shardTarget  = 1 << 30 // automatic sharding: about 1 GiB per shard
	maxLayers    = 80
	bf16Bytes    = 2
	metadataJSON = `"__metadata__":{"format":"pt"}`
)

// dims are a llama-shaped model's dimensions.
type dims struct {
	hidden, intermediate, vocab int64
	layers                      int
}

// ladder lists the shapes tried, largest first.
func ladder() []dims {
	return []dims{
		{hidden: 8192, intermediate: 28672, vocab: 32000},
		{hidden: 5120, intermediate: 13824, vocab: 32000},
		{hidden: 4096, intermediate: 11008, vocab: 32000},
		{hidden: 2048, intermediate: 5504, vocab: 32000},
		{hidden: 1024, intermediate: 2816, vocab: 32000},
		{hidden: 512, intermediate: 1408, vocab: 8192},
		{hidden: 256, intermediate: 704, vocab: 4096},
		{hidden: 128, intermediate: 352, vocab: 2048},
		{hidden: 64, intermediate: 176, vocab: 1024},
	}
}

type tensorInfo struct {
	name  string
	dtype string
	shape []int64
	size  int64
	// begin and end are data_offsets, relative to the end of the header.
	begin, end int64
}

// tensors lists the model's tensors in file order.
func (d dims) tensors() []tensorInfo {
	h, in, v := d.hidden, d.intermediate, d.vocab
	bf16 := func(name string, shape ...int64) tensorInfo {
		size := int64(bf16Bytes)
		for _, n := range shape {
			size *= n
		}
		return tensorInfo{name: name, dtype: "BF16", shape: shape, size: size}
	}
	if d.layers == 0 {
		return nil
	}
	ts := []tensorInfo{bf16("model.embed_tokens.weight", v, h)}
	for i := range d.layers {
		p := "model.layers." + strconv.Itoa(i) + "."
		ts = append(ts,
			bf16(p+"self_attn.q_proj.weight", h, h),
			bf16(p+"self_attn.k_proj.weight", h, h),
			bf16(p+"self_attn.v_proj.weight", h, h),
			bf16(p+"self_attn.o_proj.weight", h, h),
			bf16(p+"mlp.gate_proj.weight", in, h),
			bf16(p+"mlp.up_proj.weight", in, h),
			bf16(p+"mlp.down_proj.weight", h, in),
			bf16(p+"input_layernorm.weight", h),
			bf16(p+"post_attention_layernorm.weight", h),
		)
	}
	return append(ts, bf16("model.norm.weight", h), bf16("lm_head.weight", v, h))
}

func (d dims) embedBytes() int64 { return d.vocab * d.hidden * bf16Bytes }

func (d dims) layerBytes() int64 {
	h, in := d.hidden, d.intermediate
	return bf16Bytes * (4*h*h + 3*h*in + 2*h)
}

func (d dims) maxTensor() int64 { return max(d.embedBytes(), d.intermediate*d.hidden*bf16Bytes) }

// modelFile is one planned file: either text or a safetensors shard.
type modelFile struct {
	name string
	text []byte
	// Shards only: the header (length prefix, JSON, padding) and the size
	// of the whole file; the rest is pseudo-random data from stream key.
	header []byte
	size   int64
	key    uint64
}

func (f *modelFile) fileSize() int64 {
	if f.header == nil {
		return int64(len(f.text))
	}
	return f.size
}

var errNoFit = errors.New("tensors do not fit")

// planModel lays the model out. It tries the largest shapes first and keeps
// the first layout whose files fit the size exactly.
func planModel(spec ModelSpec) ([]modelFile, error) {
	if spec.Size <= 0 {
		return nil, fmt.Errorf("model size %d is not positive", spec.Size)
	}
	if spec.Shards < 0 {
		return nil, fmt.Errorf("shard count %d is negative", spec.Shards)
	}
	n := spec.Shards
	if n == 0 {
		n = int(max(1, (spec.Size+shardTarget-1)/shardTarget))
	}
	for _, minLayers := range []int{4, 1} {
		for _, d := range ladder() {
			// Room for the weights, assuming every shard wastes up to one
			// tensor at its end and ~64 KiB go to the small files.
			room := spec.Size - 64<<10 - int64(n)*4096 - int64(n-1)*d.maxTensor() - 2*d.embedBytes() - 2*d.hidden
			est := min(maxLayers, room/d.layerBytes())
			for l := est; l >= int64(minLayers) && l > est-4; l-- {
				d.layers = int(l)
				files, err := layout(spec, n, d)
				if err == nil {
					return files, nil
				}
				if !errors.Is(err, errNoFit) {
					return nil, err
				}
			}
		}
	}
	// Too small for any real tensor: shards hold filler only.
	files, err := layout(spec, n, dims{hidden: 64, intermediate: 176, vocab: 1024})
	if errors.Is(err, errNoFit) {
		return nil, fmt.Errorf("model size %d is too small for %d shards plus the tokenizer and config files", spec.Size, n)
	}
	return files, err
}

// layout places d's tensors into n shards whose sizes add up, with the text
// files, to spec.Size.
func layout(spec ModelSpec, n int, d dims) ([]modelFile, error) {
	tensors := d.tensors()
	shardNames := make([]string, n)
	fillerNames := make([]string, n)
	for i := range n {
		shardNames[i] = fmt.Sprintf("model-%05d-of-%05d.safetensors", i+1, n)
		fillerNames[i] = fmt.Sprintf("ossemu.filler.%05d", i+1)
	}
	texts, err := textFiles(d, spec.Seed)
	if err != nil {
		return nil, err
	}
	// The index is padded to the length it has with every filler present
	// and the largest possible total_size, so its size is known up front.
	worst := map[string]string{}
	for _, t := range tensors {
		worst[t.name] = shardNames[0]
	}
	for i, f := range fillerNames {
		worst[f] = shardNames[i]
	}
	worstIndex, err := indexJSON(spec.Size, worst)
	if err != nil {
		return nil, err
	}
	rest := spec.Size - int64(len(worstIndex))
	for _, t := range texts {
		rest -= int64(len(t.text))
	}
	if rest < 0 {
		return nil, errNoFit
	}

	files := texts
	weightMap := map[string]string{}
	var total int64
	next := 0 // next tensor to place
	for i := range n {
		size := rest / int64(n)
		if int64(i) < rest%int64(n) {
			size++
		}
		// Upper bound of the header: every number has as many digits as
		// the shard size, and a filler entry is always counted.
		biggest := maxWithDigits(size)
		bound := int64(len("{"+metadataJSON+"}")) + entryLen(tensorInfo{name: fillerNames[i], dtype: "U8", shape: []int64{biggest}, begin: biggest, end: biggest}) + 1
		var placed []tensorInfo
		var data int64
		for next < len(tensors) {
			t := tensors[next]
			t.begin, t.end = biggest, biggest
			b := bound + entryLen(t) + 1
			if 8+roundUp8(b)+data+t.size > size {
				break
			}
			bound = b
			t.begin, t.end = data, data+t.size
			placed = append(placed, t)
			data += t.size
			next++
		}
		padded := roundUp8(bound)
		filler := size - 8 - padded - data
		if filler < 0 {
			return nil, errNoFit
		}
		if filler > 0 {
			placed = append(placed, tensorInfo{name: fillerNames[i], dtype: "U8", shape: []int64{filler}, size: filler, begin: data, end: data + filler})
		}
		header, err := shardHeader(placed, padded)
		if err != nil {
			return nil, err
		}
		for _, t := range placed {
			weightMap[t.name] = shardNames[i]
			total += t.size
		}
		files = append(files, modelFile{name: shardNames[i], header: header, size: size, key: streamKey(spec.Seed, i)})
	}
	if next < len(tensors) {
		return nil, errNoFit
	}
	index, err := indexJSON(total, weightMap)
	if err != nil {
		return nil, err
	}
	if len(index) > len(worstIndex) {
		return nil, fmt.Errorf("internal: index is %d bytes, more than its bound %d", len(index), len(worstIndex))
	}
	// JSON allows trailing white space: pad to the planned length.
	index = append(index, bytes.Repeat([]byte(" "), len(worstIndex)-len(index))...)
	files = append(files, modelFile{name: "model.safetensors.index.json", text: index})
	slices.SortFunc(files, func(a, b modelFile) int { return cmpString(a.name, b.name) })
	return files, nil
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// maxWithDigits returns the largest number with as many digits as n.
func maxWithDigits(n int64) int64 {
	m := int64(9)
	for m < n {
		m = m*10 + 9
	}
	return m
}

func roundUp8(n int64) int64 { return (n + 7) &^ 7 }

// entryLen is the length of t's entry in a safetensors header.
func entryLen(t tensorInfo) int64 {
	b, _ := json.Marshal(t.name) // a string always marshals
	return int64(len(b)) + int64(len(entryBody(t)))
}

func entryBody(t tensorInfo) string {
	var sb bytes.Buffer
	sb.WriteString(`:{"dtype":"` + t.dtype + `","shape":[`)
	for i, n := range t.shape {
		if i > 0 {
			sb.WriteByte(',')
		}
		sb.WriteString(strconv.FormatInt(n, 10))
	}
	sb.WriteString(`],"data_offsets":[` + strconv.FormatInt(t.begin, 10) + "," + strconv.FormatInt(t.end, 10) + "]}")
	return sb.String()
}

// shardHeader renders the 8-byte length prefix and the JSON header of a
// shard, with keys sorted as the safetensors library writes them, padded
// with spaces to padded bytes.
func shardHeader(tensors []tensorInfo, padded int64) ([]byte, error) {
	sorted := slices.Clone(tensors)
	slices.SortFunc(sorted, func(a, b tensorInfo) int { return cmpString(a.name, b.name) })
	var b bytes.Buffer
	b.Write(make([]byte, 8))
	b.WriteString("{" + metadataJSON)
	for _, t := range sorted {
		name, _ := json.Marshal(t.name)
		b.WriteByte(',')
		b.Write(name)
		b.WriteString(entryBody(t))
	}
	b.WriteByte('}')
	if int64(b.Len()-8) > padded {
		return nil, fmt.Errorf("internal: shard header is %d bytes, more than its bound %d", b.Len()-8, padded)
	}
	b.Write(bytes.Repeat([]byte(" "), int(padded)-(b.Len()-8)))
	out := b.Bytes()
	binary.LittleEndian.PutUint64(out, uint64(padded))
	return out, nil
}
